-- The write fence's pass for the mover is the mover's role, not a setting alone. Migration 004
-- let through any transaction that set `ca_dms.move_writer` to 'on', which every login may set:
-- the application login (or any writer in another language) could write to a fenced or moved
-- unit with one `set local`. The pass now also requires the writing role to be a member of
-- `ca_dms_mover` (migration 006; superusers are members of every role, so local mode's mover,
-- which runs as the cluster's owner, passes as before). The trigger runs as the invoker, so
-- `current_user` is the login that writes (or the role it could SET ROLE to: only a member can).
create or replace function enforce_write_fence() returns trigger language plpgsql as $$
declare
  owner_col constant text := tg_argv[0];
  rec jsonb;
  f record;
begin
  if not exists (select 1 from write_fences)
     or (current_setting('ca_dms.move_writer', true) = 'on' and pg_has_role(current_user, 'ca_dms_mover', 'member')) then
    return case when tg_op = 'DELETE' then old else new end;
  end if;
  foreach rec in array array[
    case when tg_op <> 'INSERT' then to_jsonb(old) end,
    case when tg_op <> 'DELETE' then to_jsonb(new) end
  ] loop
    continue when rec is null;
    select w.kind, w.unit_id, w.state, w.moved_to, w.map_version into f
      from write_fences w
     where (w.kind = 'directory' and w.unit_id = rec ->> owner_col)
        or (w.kind = 'slot' and w.unit_id = rec ->> 'slot' and not ((rec ->> owner_col) = any (w.excluded_keys)))
     order by w.kind = 'directory' desc
     limit 1
       for share;
    continue when not found or f.state = 'open';
    if f.state in ('fenced', 'incoming') then
      raise exception 'write to % % refused: a move is cutting it over; retry shortly', f.kind, f.unit_id
        using errcode = 'CAF01', detail = format('fence state %s, map version %s', f.state, f.map_version);
    end if;
    raise exception 'write to % % refused: this shard does not own it (%)', f.kind, f.unit_id,
        format('moved to %s in map version %s', f.moved_to, f.map_version)
      using errcode = 'CAF02', detail = format('fence state %s, moved_to %s, map version %s', f.state, coalesce(f.moved_to, '-'), f.map_version);
  end loop;
  return case when tg_op = 'DELETE' then old else new end;
end
$$;
