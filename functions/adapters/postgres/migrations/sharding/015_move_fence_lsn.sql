-- Where a move's source was in its WAL when the move fenced it, and what timeline its target was on
-- when the copy into it began (issue #15, docs/sharding-spec.md "A write lost in a failover").
-- Migration 014's last_move_off judges a token `A@<lsn>;tl=T` by the newest move off A alone: a
-- write copied off A on T (A to B), lost on A afterwards by a failover of A (switchpoint before the
-- token's LSN) while the unit was away, then back on A on the later timeline and off again (to C),
-- reads as lost on C although C holds it. With the fence's position the catalog tells the two
-- apart: a move off A fenced on T at or past the token's LSN copied the write (the mover's fence
-- UPDATE answers pg_current_wal_insert_lsn() in its RETURNING, after every write of the unit that
-- committed: functions/adapters/postgres/move-port.ts). The copy off stays the write's only if the
-- unit, each time it came back onto A, came on a later timeline than T and left again on that one:
-- a copy back while A was still on T lies past the fence, so past the token's LSN, and the
-- failover that lost the token's write lost it too (A's later timeline has the unit as it was
-- before the write; so has C); a stay during which A failed over again may have lost it too.
-- Hence the target's timeline when the copy into it began. NULL where not recorded (a move before
-- this migration): such a move never tells a write copied, nor a stay on A safe. The fence
-- position is set NULL again (and the timeline set to the release's) when the fence was released
-- on another timeline than its own: the source failed over under the fence, and the final
-- catch-up, the verification and the flip ran on a timeline that may lack writes before it; the
-- history is then that timeline's, read once writes are let through (NULL when it cannot be had),
-- so that migration 014's rule tells a write of the fence's timeline that the copy lacks.
alter table catalog.move_jobs
  add column source_fence_lsn pg_lsn,
  add column target_timeline bigint check (target_timeline between 1 and 4294967295);

-- Whether the write a token of `p_shard` names (timeline `p_timeline`, WAL position `p_lsn`) was
-- copied off that shard by a finished move of the unit of routing key `p_key` (of slot `p_slot`)
-- and has not been at risk on that shard since. Of the `done` moves of the unit off or onto
-- `p_shard` (matched as in last_move_off; one unit's moves run one at a time, so off and onto
-- alternate), the newest move off fenced on `p_timeline` at or past `p_lsn` copied the write off.
-- Each move that brought the unit back onto `p_shard` after it must have written its copy on a
-- later timeline than `p_timeline` (the target's timeline when its copy began) and the unit must
-- have left again fenced on that same timeline: a copy back on `p_timeline` lies past that fence,
-- so past the token, and went with the failover that cut `p_timeline` short of the token; one on
-- a later timeline the unit left on a later one still may have been cut short by a second
-- failover (not known: not told copied). False when nothing says so, or not recorded (a move
-- before this migration). For the application login, as last_move_off: it answers this one
-- question, nothing else of the move history.
create function catalog.write_copied_off(p_shard text, p_slot integer, p_key text, p_timeline bigint, p_lsn pg_lsn)
returns boolean
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
  with moves as (
    select j.from_shard = p_shard as off, j.source_timeline, j.source_fence_lsn, j.target_timeline, j.finished_at,
           row_number() over w as n,
           lead(j.from_shard = p_shard) over w as next_off,
           lead(j.source_timeline) over w as next_timeline
      from catalog.move_jobs j
     where j.state = 'done' and j.slot = p_slot and (j.from_shard = p_shard or j.to_shard = p_shard)
       and ((j.kind = 'slot' and not (p_key = any (j.excluded_keys))) or (j.kind = 'directory' and j.unit_id = p_key))
    window w as (order by j.finished_at nulls last, j.id)
  )
  select coalesce((
    select not exists (
             select 1 from moves back
              where not back.off and back.n > copied.n
                and (back.target_timeline is null or back.target_timeline <= p_timeline
                     or back.next_off is not true or back.next_timeline is distinct from back.target_timeline))
      from moves copied
     where copied.off and copied.source_timeline = p_timeline and copied.source_fence_lsn >= p_lsn
       -- A done move without its finished_at (set by hand) has no place in the order: not known.
       and not exists (select 1 from moves unordered where unordered.finished_at is null)
     order by copied.n desc
     limit 1), false)
$$;

revoke all on function catalog.write_copied_off(text, integer, text, bigint, pg_lsn) from public;
grant execute on function catalog.write_copied_off(text, integer, text, bigint, pg_lsn) to ca_dms_app, ca_dms_control;

-- Migration 014's last_move_off counted `done` moves only, but a move's new owner serves the unit
-- from its release on (the target's fence opened), and `done` comes only after the readers' grace
-- and the source's rows deleted: meanwhile a read on the new owner with a token whose write the
-- source's failover lost before this move found an older move off the shard, or none, and answered
-- as usual (a list 200 without the write). The slot's one active move (move_jobs_one_active_per_slot)
-- counts too once its flip was published (flip_started_at is set in the flip's own transaction, and
-- a move past it can only finish), newer than every done one. What it recorded at its fence is
-- what the read is judged by; the release rewrites it only when the source failed over under
-- the fence (docs/sharding-spec.md, "A write lost in a failover"). Same signature and grants.
create or replace function catalog.last_move_off(p_shard text, p_slot integer, p_key text)
returns table (job_id bigint, source_timeline bigint, source_history text)
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
  select m.id, m.source_timeline, m.source_history
    from (
      select j.id, j.source_timeline, j.source_history, 0 as rank, null::timestamptz as finished_at
        from catalog.move_jobs j
       where j.state not in ('done', 'failed', 'cancelled') and j.flip_started_at is not null and j.slot = p_slot and j.from_shard = p_shard
         and ((j.kind = 'slot' and not (p_key = any (j.excluded_keys))) or (j.kind = 'directory' and j.unit_id = p_key))
      union all
      select j.id, j.source_timeline, j.source_history, 1, j.finished_at
        from catalog.move_jobs j
       where j.state = 'done' and j.from_shard = p_shard and j.slot = p_slot
         and ((j.kind = 'slot' and not (p_key = any (j.excluded_keys))) or (j.kind = 'directory' and j.unit_id = p_key))
    ) m
   order by m.rank, m.finished_at desc nulls last, m.id desc
   limit 1
$$;

revoke all on function catalog.last_move_off(text, integer, text) from public;
grant execute on function catalog.last_move_off(text, integer, text) to ca_dms_app, ca_dms_control;
