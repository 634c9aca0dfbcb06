-- Writes to the sharded tables must run at READ COMMITTED (SQLSTATE CAF05 otherwise).
--
-- The fence trigger (migration 007) and the change capture (migration 002) read write_fences and
-- move_captures with the writing transaction's snapshot. Under REPEATABLE READ or SERIALIZABLE
-- that is the snapshot of the transaction's first statement: a transaction that began before a
-- move created its fence row and capture row sees neither, so its write was neither refused nor
-- captured. The mover's drain (which waits for writers older than the capture) skipped it too, as
-- it had not written yet. Shown against real PostgreSQL: a REPEATABLE READ writer whose
-- transaction began before the move committed on the old owner while the unit was fenced, and the
-- move's clean-up then deleted that acknowledged row. At READ COMMITTED every statement takes a
-- new snapshot, and the fence row is locked FOR SHARE, so the protocol holds; the mover's own
-- transactions pass as before (checked first). Reads at any isolation level are unaffected: the
-- triggers fire on writes only.
create or replace function enforce_write_fence() returns trigger language plpgsql as $$
declare
  owner_col constant text := tg_argv[0];
  rec jsonb;
  f record;
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
  return case when tg_op = 'DELETE' then old else new end;
end
$$;
