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
-- 021's, untouched: ALTER FUNCTION adds the setting beside the pinned search_path and keeps the
-- owner and grants. A later CREATE OR REPLACE of this function resets its SET clauses to the ones
-- it gives: it must give both.
do $migration$
declare
  nsp constant name := (select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = 'move_changes'::regclass);
begin
  if to_regprocedure(format('%I.enforce_write_fence()', nsp)) is null then
    raise exception 'shard function %.enforce_write_fence() not found beside move_changes: not altered', nsp;
  end if;
  execute format('alter function %I.enforce_write_fence() set enable_seqscan = off', nsp);
end
$migration$;
