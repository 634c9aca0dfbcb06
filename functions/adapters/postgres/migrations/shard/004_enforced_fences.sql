-- The write fence enforced by the database, for every writer (docs/sharding-spec.md, "Write
-- fences"). Migration 002 made the fence a protocol that withShardWrite follows; a writer in
-- another language that skipped it could write to the old owner during or after a move. Now a
-- trigger on every sharded table checks each written row against `write_fences`:
--
--   open      this shard owns the unit: the write goes ahead
--   fenced    a move is cutting the unit over: SQLSTATE CAF01, retry in a moment
--   moved     another shard owns the unit (moved_to, map_version say which): SQLSTATE CAF02
--   incoming  a move is copying the unit here; it becomes 'open' when the move releases its
--             fence, right after the flip: SQLSTATE CAF01, retry in a moment
--
-- The trigger reads the fence row FOR SHARE, inside the writer's transaction, so the mover's
-- UPDATE to 'fenced' waits for writers in flight, exactly as for withShardWrite. A directory
-- fence row (one key) takes precedence over the slot's, and a slot fence ignores the keys the
-- directory keeps elsewhere (excluded_keys). The mover's own writes (copy, catch-up, clean-up)
-- set `ca_dms.move_writer` to 'on' for their transaction and pass.
alter table write_fences drop constraint write_fences_state_check;
alter table write_fences add constraint write_fences_state_check check (state in ('open', 'fenced', 'moved', 'incoming'));
alter table write_fences add column excluded_keys text[] not null default '{}';

create function enforce_write_fence() returns trigger language plpgsql as $$
declare
  owner_col constant text := tg_argv[0];
  rec jsonb;
  f record;
begin
  if current_setting('ca_dms.move_writer', true) = 'on' or not exists (select 1 from write_fences) then
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

create trigger users_write_fence before insert or update or delete on users
  for each row execute function enforce_write_fence('id');
create trigger documents_write_fence before insert or update or delete on documents
  for each row execute function enforce_write_fence('owner_id');

-- TRUNCATE fires no row triggers, so it would bypass the change capture of a move in progress
-- and the copy would resurrect (or the verification trip over) what it removed: refuse it while
-- any move captures changes on this shard.
create function refuse_truncate_during_move() returns trigger language plpgsql as $$
begin
  if exists (select 1 from move_captures) then
    raise exception 'TRUNCATE % refused: a move is capturing changes on this shard (it would bypass the capture); wait for the move to finish or cancel it', tg_table_name
      using errcode = 'CAF03';
  end if;
  return null;
end
$$;

create trigger users_truncate_guard before truncate on users
  for each statement execute function refuse_truncate_during_move();
create trigger documents_truncate_guard before truncate on documents
  for each statement execute function refuse_truncate_during_move();
