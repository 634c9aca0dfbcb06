-- What a move's source was on when the move fenced it (issue #15, docs/sharding-spec.md "A write
-- lost in a failover"). A read-your-writes token of shard A (`A@<lsn>;tl=T`) names a write A's
-- primary acknowledged on timeline T. If A then failed over to a replica that had not received it
-- (timeline F > T, whose history says T ends before the token's LSN) and the write's unit moved
-- off A afterwards, the move copied timeline F, without the write: a read of the unit on its new
-- shard finds nothing, and must answer that the write was lost (410), not that it never existed.
-- The new shard's own history says nothing of A's, so the mover records, at the fence (the last
-- moment A's writes to the unit were taken), A's timeline and that timeline's history file's
-- text (shard migration 027's timeline_history(); NULL when it could not be read: a move before
-- this migration, a mover without EXECUTE (shard migration 031), an owner who may not read the file).
alter table catalog.move_jobs
  add column source_timeline bigint check (source_timeline between 1 and 4294967295),
  add column source_history text;

-- A read's lookup below (only when a read with another shard's token found nothing, or lists).
create index move_jobs_done_off_idx on catalog.move_jobs (slot, from_shard) where state = 'done';

-- The last finished move off `p_shard` of the unit routing key `p_key` (of slot `p_slot`) lives
-- in: a slot move of the slot that did not leave the key behind (excluded_keys), or a directory
-- move of the key; the newest first. For the application login, which has no SELECT on
-- move_jobs: it answers this one question, nothing else of the catalog's move history.
create function catalog.last_move_off(p_shard text, p_slot integer, p_key text)
returns table (job_id bigint, source_timeline bigint, source_history text)
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
  select j.id, j.source_timeline, j.source_history
    from catalog.move_jobs j
   where j.state = 'done' and j.from_shard = p_shard and j.slot = p_slot
     and ((j.kind = 'slot' and not (p_key = any (j.excluded_keys))) or (j.kind = 'directory' and j.unit_id = p_key))
   order by j.finished_at desc nulls last, j.id desc
   limit 1
$$;

revoke all on function catalog.last_move_off(text, integer, text) from public;
grant execute on function catalog.last_move_off(text, integer, text) to ca_dms_app, ca_dms_control;
