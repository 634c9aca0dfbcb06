-- The shards any move job names, kept by the catalog (issue #15, after migrations 020 and 021): a
-- map by hand or a pin by hand naming an owner that neither the directory nor a slot map names (a
-- typo, 'shard_0O2' for 'shard_002'; a shard new to the catalog) still read every move job, twice:
-- catalog.shard_known's `exists (... from_shard = p_shard or to_shard = p_shard)` (a sequential
-- scan: the statement of a SQL function is planned generically, and with a few shards in the jobs
-- "one matching row" is expected within the first rows, so no index on the two columns would be
-- chosen; migration 018 measured that), then catalog.known_shards (the refusal's "known: ..."
-- list), a DISTINCT of every job's two shards. bench/slot-map-by-hand.ts, a typo in one owner of a
-- map by hand: about 4 ms with no move jobs, 63 to 75 ms with 100,000 (2 cores loaded by other
-- work), linear in the jobs, which only grow (the catalog's history, never pruned). Now
-- catalog.move_job_shards holds every shard a move job names, one row each, written by the catalog
-- itself in the transaction that writes the job, and both functions look there: the same answer,
-- independent of the number of jobs (`bench/slot-map-by-hand.ts --variants 024,current --jobs
-- 0,100000 --rounds 9`, 2 cores at load 13: a typo 11.4 ms with no jobs and 292 ms with 100,000
-- through 024; 13.2 ms and 12.6 ms with this migration).
--
-- Written by a trigger of its own AFTER INSERT on catalog.move_jobs (and after an UPDATE of either
-- shard column, a superuser's or a control login's SQL; nothing in this code changes them): one
-- index probe of a table of a few rows per shard of the job, an insert only for a shard no job
-- named before (a move to a new shard). Migration 020 left the jobs out of a table for the wait this
-- brings, which is bounded: the first plan naming a new shard holds its row until the plan
-- commits, and a second plan naming the same new shard at once waits for that commit (at most the
-- first plan's own waits, its slot's pin lock among them, 5 s); no other writer or reader waits. Not on the movers' path past the plan: a job's state
-- changes touch neither column, so the trigger does not fire, and no index is added to move_jobs
-- (migration 018 says why two indexes on from_shard and to_shard were left out). As in 020's
-- catalog.slot_map_shards_add, the rows are the transaction's own (a plan rolled back takes its
-- shards back with it), a shard the transaction's snapshot shows is not tried again, and two plans
-- naming the same new shard at once: the second's insert waits for the first's (unique index) and,
-- if the first committed, does nothing (its unique_violation caught; a move is planned READ
-- COMMITTED, mover.ts). A DELETE of a job (a superuser's; the jobs are the catalog's history)
-- leaves its shards known, as 020 does for a deleted map; a TRUNCATE of the jobs empties the table.
-- Inserts made with the triggers off (`session_replication_role = replica`, a superuser's) are not
-- recorded.
--
-- The fill below reads every job once (one DISTINCT of two columns: about 60 ms at 100,000 jobs)
-- under SHARE ROW EXCLUSIVE on catalog.move_jobs, taken before the trigger is created: every job
-- committed before it is read by the fill, every job inserted after it is recorded by the trigger.
-- It holds off the jobs' writers (a plan, a state change) for that moment, not the routers (they
-- do not read the jobs) nor the movers' reads; the runner's lock_timeout bounds its wait for them.
--
-- Safe on a live catalog and idempotent: a new table, triggers created or replaced in place
-- (`create or replace trigger`: a DROP TRIGGER would take ACCESS EXCLUSIVE, holding off every read),
-- `create or replace function` of 021's catalog.shard_known and 013's catalog.known_shards (same
-- signatures and attributes, their grants kept), nothing that needs a superuser.
create table if not exists catalog.move_job_shards (
  shard_id text primary key
);
revoke all on catalog.move_job_shards from public;

lock table catalog.move_jobs in share row exclusive mode;

-- Adds each of `p_shards` (NULLs and duplicates ignored) that the table does not hold, one at a
-- time in code-point order (two plans naming the same two new shards wait for each other one way),
-- a concurrent insert of the same shard waited for and then left as it is. Called by the triggers
-- below and by the fill; no login may call it.
create or replace function catalog.move_job_shards_add(p_shards text[]) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  shard text;
begin
  for shard in
    select distinct s collate "C" from unnest(p_shards) s
     where s is not null and not exists (select 1 from catalog.move_job_shards k where k.shard_id = s)
     order by 1
  loop
    begin
      insert into catalog.move_job_shards (shard_id) values (shard);
    exception when unique_violation then
      null; -- another transaction's, committed
    end;
  end loop;
end
$$;
revoke all on function catalog.move_job_shards_add(text[]) from public;

create or replace function catalog.move_job_shards_changed() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op = 'TRUNCATE' then
    delete from catalog.move_job_shards;
    return null;
  end if;
  perform catalog.move_job_shards_add(array[new.from_shard, new.to_shard]);
  return null;
end
$$;
revoke all on function catalog.move_job_shards_changed() from public;

create or replace trigger move_job_shards_inserted after insert on catalog.move_jobs
  for each row execute function catalog.move_job_shards_changed();
create or replace trigger move_job_shards_updated after update of from_shard, to_shard on catalog.move_jobs
  for each row execute function catalog.move_job_shards_changed();
create or replace trigger move_job_shards_truncated after truncate on catalog.move_jobs
  for each statement execute function catalog.move_job_shards_changed();

select catalog.move_job_shards_add(array(select j.from_shard from catalog.move_jobs j union select j.to_shard from catalog.move_jobs j));

-- Migration 021's function, "a move job names it" read from the table. Same answer.
create or replace function catalog.shard_known(p_shard text) returns boolean
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
  select exists (select 1 from catalog.slot_map_shards k where k.shard_id = p_shard)
      or exists (select 1 from catalog.shard_directory d where d.shard_id = p_shard)
      or exists (select 1 from catalog.move_job_shards j where j.shard_id = p_shard)
$$;

-- Migration 013's function, the move jobs' shards read from the table. Same list.
create or replace function catalog.known_shards() returns text
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
  select coalesce(string_agg(s, ', ' order by s collate "C"), 'none')
    from (select unnest(m.assignments) as s from (select assignments from catalog.slot_maps order by version desc limit 1) m
          union select d.shard_id from catalog.shard_directory d
          union select j.shard_id from catalog.move_job_shards j) k
$$;
