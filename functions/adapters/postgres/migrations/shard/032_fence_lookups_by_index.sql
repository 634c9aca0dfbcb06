-- The write fence's look-ups (of an inserted id, the insert-meets-copy check of migrations 018
-- and 021, and of a written row's unit in write_fences) read by index whatever the tables held
-- when a session's plan was made (docs/sharding-spec.md section 9, "The trigger's plans").
--
-- The function's statements are static: PL/pgSQL keeps a plan for each per session, and from a
-- statement's sixth run PostgreSQL may keep one generic plan (made without the id's value) for
-- the rest of the session. Made while the written table was analyzed empty or nearly so (a move's
-- clean-up emptied it, a restore or a backfill starts into a new shard) on a shard holding a fence
-- row (a finished move's `moved` row stays), that plan was a sequential scan of the table, kept
-- while the table grew: each inserted row read every row inserted before it. A bulk
-- `INSERT ... SELECT` of 99,000 documents took 19.5 s against 2.9 s for 20,000 (quadratic); an
-- application session that made its plan then kept reading the whole table for each insert until
-- the next VACUUM or ANALYZE of the table. The look-ups of the written row's unit in write_fences
-- did the same on a write_fences analyzed with few rows that then grew (finished moves' `moved`
-- rows stay): a sequential scan of all of them for every write.
--
-- The function now runs with `enable_seqscan = off` (a SET clause of the function: its own
-- statements only, restored when it returns): a plan, generic or not, takes an index wherever one
-- answers the statement (each look-up here has one: an index on the written table's id, and
-- write_fences' primary key) and a sequential scan only where none does, so results are unchanged
-- and plans are still kept: a single-row write costs what it did with 021 (0.85-0.96x, within the
-- noise), and a bulk insert into an emptied, analyzed table grows linearly (10,000 rows 1.06 s,
-- 40,000 rows 4.14 s, against 5.04 s and 87.3 s). Forcing a plan at every run instead
-- (`plan_cache_mode = force_custom_plan`, or the look-up as dynamic SQL) is linear too but costs
-- 1.3-1.9x per insert (`npm run bench:fence-trigger`, README's benchmarks table). The body is
-- 021's, unchanged but for a comment; created the same way (search_path pinned, tables
-- qualified). CREATE OR REPLACE keeps the function's owner and grants, and resets its SET clauses
-- to the ones given: a later replacement of this function must give both.
do $migration$
declare
  nsp constant name := (select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = 'move_changes'::regclass);
  s constant text := quote_ident(nsp);
begin
  if to_regprocedure(format('%I.enforce_write_fence()', nsp)) is null then
    raise exception 'shard function %.enforce_write_fence() not found beside move_changes: not replaced', nsp;
  end if;
  execute replace($fn$
create or replace function @S@.enforce_write_fence() returns trigger language plpgsql
  set search_path = pg_catalog, pg_temp
  set enable_seqscan = off
as $$
declare
  owner_col constant text := tg_argv[0];
  rec jsonb;
  f record;
  held jsonb;
begin
  if current_setting('ca_dms.move_writer', true) = 'on' and pg_has_role(session_user, 'ca_dms_mover', 'member') then
    return case when tg_op = 'DELETE' then old else new end;
  end if;
  if current_setting('transaction_isolation') <> 'read committed' then
    raise exception 'write to % refused: writes to sharded tables must run at READ COMMITTED, not %', tg_table_name, upper(current_setting('transaction_isolation'))
      using errcode = 'CAF05',
            hint = 'A snapshot taken before a move began cannot see its fence or its change capture; see docs/sharding-spec.md section 9.';
  end if;
  if not exists (select 1 from @S@.write_fences) then
    return case when tg_op = 'DELETE' then old else new end;
  end if;
  foreach rec in array array[
    case when tg_op <> 'INSERT' then to_jsonb(old) end,
    case when tg_op <> 'DELETE' then to_jsonb(new) end
  ] loop
    continue when rec is null;
    select w.kind, w.unit_id, w.state, w.moved_to, w.map_version into f
      from @S@.write_fences w
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
    -- Static statements (plans kept per session, by index: the function's enable_seqscan = off,
    -- shard migration 032), one per sharded table.
    if tg_table_name = 'documents' then
      select to_jsonb(t) into held from @S@.documents t where t.id = new.id;
    elsif tg_table_name = 'users' then
      select to_jsonb(t) into held from @S@.users t where t.id = new.id;
    elsif tg_table_name = 'document_keys' then
      select to_jsonb(t) into held from @S@.document_keys t where t.id = new.id;
    end if;
    if held is not null then
      select w.state into f
        from @S@.write_fences w
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
$$
$fn$, '@S@', s);
end
$migration$;
