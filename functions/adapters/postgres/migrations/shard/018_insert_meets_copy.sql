-- An insert whose id is held here by a row of a unit this shard does not own (a move's copy coming
-- in, `incoming`, or a finished move's rows waiting for its clean-up, `moved`) now fails with
-- SQLSTATE 23505 on the id in every statement form, not only in a plain INSERT.
--
-- A document handed to an owner on this shard (delete there, insert here; docs/sharding-spec.md
-- section 9) can meet such a row of its old unit. A plain INSERT met the primary key: 23505, which
-- the writers treat as a wait while the unit's owner no longer holds the id (withShardWrite,
-- conflictsWithCopy). But the spec's idempotent form, `insert ... on conflict (id) do update set
-- id = excluded.id`, ran the UPDATE's fence check on the other unit's row instead: `moved` answered
-- CAF02, which sends a writer to re-route its own key, to this same shard, until it gives up
-- ("routing is not converging"), after the delete on the other shard was acknowledged: the
-- document was on no shard. And `on conflict (id) do nothing` did nothing and was acknowledged
-- (the spec had to forbid it for documents): the copy's removal then left the document nowhere.
--
-- The row trigger runs before the insertion and its conflict check, in every form (INSERT, ON
-- CONFLICT DO UPDATE / DO NOTHING, COPY, MERGE's INSERT action), so after the fence check of the
-- written row it looks the id up here: held by a row whose unit is `incoming` or `moved` here, it
-- raises 23505 with the primary key's name, table and `Key (id)=(...)` detail, exactly what the
-- primary key would say, so a writer's existing rule decides (wait while the owning shard no
-- longer holds the id; otherwise a real duplicate). A row of a unit this shard owns is left to
-- the primary key and ON CONFLICT as before, so idempotent retries of an insert still work. The
-- mover's transactions pass before any of this, as before. It costs one primary-key probe per
-- inserted row, only on a shard that has fence rows.
create or replace function enforce_write_fence() returns trigger language plpgsql as $$
declare
  owner_col constant text := tg_argv[0];
  rec jsonb;
  f record;
  held jsonb;
begin
  if current_setting('ca_dms.move_writer', true) = 'on' and pg_has_role(current_user, 'ca_dms_mover', 'member') then
    return case when tg_op = 'DELETE' then old else new end;
  end if;
  if current_setting('transaction_isolation') <> 'read committed' then
    raise exception 'write to % refused: writes to sharded tables must run at READ COMMITTED, not %', tg_table_name, upper(current_setting('transaction_isolation'))
      using errcode = 'CAF05',
            hint = 'A snapshot taken before a move began cannot see its fence or its change capture; see docs/sharding-spec.md section 9.';
  end if;
  if not exists (select 1 from write_fences) then
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
  if tg_op = 'INSERT' then
    -- Static statements (plans cached per session), one per sharded table.
    if tg_table_name = 'documents' then
      select to_jsonb(t) into held from documents t where t.id = new.id;
    elsif tg_table_name = 'users' then
      select to_jsonb(t) into held from users t where t.id = new.id;
    end if;
    if held is not null then
      select w.state into f
        from write_fences w
       where (w.kind = 'directory' and w.unit_id = held ->> owner_col)
          or (w.kind = 'slot' and w.unit_id = held ->> 'slot' and not ((held ->> owner_col) = any (w.excluded_keys)))
       order by w.kind = 'directory' desc
       limit 1;
      if found and f.state in ('incoming', 'moved') then
        raise exception 'duplicate key value violates unique constraint "%"', tg_table_name || '_pkey'
          using errcode = 'unique_violation', schema = tg_table_schema, table = tg_table_name, constraint = tg_table_name || '_pkey',
                detail = format('Key (id)=(%s) already exists.', new.id),
                hint = format('The row holding this id is of a unit that is %s on this shard (a move''s copy or a moved unit''s rows before its clean-up): while the shard that owns that unit no longer holds the id, retry shortly (docs/sharding-spec.md section 9).', f.state);
      end if;
    end if;
  end if;
  return case when tg_op = 'DELETE' then old else new end;
end
$$;

-- CREATE OR REPLACE resets the function's SET clauses: pin search_path again (migration 013).
do $$
begin
  execute format('alter function %I.enforce_write_fence() set search_path = %I, pg_temp', current_schema(), current_schema());
end
$$;
