-- Which cluster a move's source was when the move fenced it (issue #15, docs/sharding-spec.md "A
-- write lost in a failover"). Migrations 014 and 015 record the source's timeline, that timeline's
-- history and the fence's WAL position: a cluster's own numbers. An RDS blue/green deployment for
-- a major version upgrade feeds green, another cluster (timeline 1, WAL positions of its own), by
-- logical replication, and after the switchover the shard's address reaches green. A failover of
-- green afterwards (timeline 2, green's timeline 1 ending at green's position X) and a move off
-- the shard then recorded timeline 2 and that history; a token of blue (tl=1, a position in
-- blue's WAL past X) read on the unit's new shard was judged by it: "lost before the move" (410)
-- though green held the write and the move copied it
-- (test/integration/sharding/timeline-lost-write-blue-green.test.ts). Read tokens name their
-- cluster (`;id=`, pg_control_system()'s system identifier as 16 lower-case hexadecimal digits,
-- functions/adapters/postgres/cluster-identity.ts); the mover now records the source's at the
-- fence, read in the fence's own statement. NULL where not recorded (a move before this
-- migration, a mover refused pg_control_system()): a token that names its cluster is then not
-- judged by that move's record (not known: the read answers as usual, never 410); a token that
-- names none is judged as before.
alter table catalog.move_jobs
  add column source_cluster_id text check (source_cluster_id ~ '^[0-9a-f]{16}$');

-- Migration 015's last_move_off, with the cluster recorded. A function's result columns cannot be
-- changed in place: dropped and made again in this migration's transaction (the code deployed
-- before it names its columns, so reads them as before), with the same grants.
drop function catalog.last_move_off(text, integer, text);
create function catalog.last_move_off(p_shard text, p_slot integer, p_key text)
returns table (job_id bigint, source_timeline bigint, source_history text, source_cluster_id text)
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
  select m.id, m.source_timeline, m.source_history, m.source_cluster_id
    from (
      select j.id, j.source_timeline, j.source_history, j.source_cluster_id, 0 as rank, null::timestamptz as finished_at
        from catalog.move_jobs j
       where j.state not in ('done', 'failed', 'cancelled') and j.flip_started_at is not null and j.slot = p_slot and j.from_shard = p_shard
         and ((j.kind = 'slot' and not (p_key = any (j.excluded_keys))) or (j.kind = 'directory' and j.unit_id = p_key))
      union all
      select j.id, j.source_timeline, j.source_history, j.source_cluster_id, 1, j.finished_at
        from catalog.move_jobs j
       where j.state = 'done' and j.from_shard = p_shard and j.slot = p_slot
         and ((j.kind = 'slot' and not (p_key = any (j.excluded_keys))) or (j.kind = 'directory' and j.unit_id = p_key))
    ) m
   order by m.rank, m.finished_at desc nulls last, m.id desc
   limit 1
$$;

revoke all on function catalog.last_move_off(text, integer, text) from public;
grant execute on function catalog.last_move_off(text, integer, text) to ca_dms_app, ca_dms_control;

-- Migration 015's write_copied_off for a token that names its cluster `p_cluster_id`: the fence
-- positions and timelines it compares with the token's are those of moves off `p_shard` that
-- recorded that cluster. A copy off recorded of another cluster, or of none, never tells the
-- write copied; nor does a stay of the unit back on `p_shard` that it left again from another
-- cluster or one not recorded (its timeline says nothing of the token's). The five-argument
-- function stays, for a token without the id (and the code deployed before this migration).
create function catalog.write_copied_off(p_shard text, p_slot integer, p_key text, p_timeline bigint, p_lsn pg_lsn, p_cluster_id text)
returns boolean
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
  with moves as (
    select j.from_shard = p_shard as off, j.source_timeline, j.source_fence_lsn, j.target_timeline, j.finished_at, j.source_cluster_id,
           row_number() over w as n,
           lead(j.from_shard = p_shard) over w as next_off,
           lead(j.source_timeline) over w as next_timeline,
           lead(j.source_cluster_id) over w as next_cluster_id
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
                     or back.next_off is not true or back.next_timeline is distinct from back.target_timeline
                     or back.next_cluster_id is distinct from p_cluster_id))
      from moves copied
     where copied.off and copied.source_timeline = p_timeline and copied.source_fence_lsn >= p_lsn
       and copied.source_cluster_id = p_cluster_id
       -- A done move without its finished_at (set by hand) has no place in the order: not known.
       and not exists (select 1 from moves unordered where unordered.finished_at is null)
     order by copied.n desc
     limit 1), false)
$$;

revoke all on function catalog.write_copied_off(text, integer, text, bigint, pg_lsn, text) from public;
grant execute on function catalog.write_copied_off(text, integer, text, bigint, pg_lsn, text) to ca_dms_app, ca_dms_control;
