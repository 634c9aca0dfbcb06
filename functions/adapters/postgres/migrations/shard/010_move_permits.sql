-- Which run of a move job may write on this shard: the highest lease epoch that has claimed it
-- (docs/sharding-spec.md, "Move permits"). A move job is held by a lease on its catalog row
-- (sharding migration 006) and every catalog write of a run is compare-and-set on its lease
-- epoch; but a run that stalled between checking its lease and writing a shard (a GC pause, a
-- partition) could still act on the shard after another run took the job over: reopen the fence
-- the new run holds, or write old rows into the target. The shard now decides for itself.
--
-- A run claims the permit of its job on both shards as soon as it holds the lease, before any
-- other step (`move_permit_claim`, a compare-and-set that refuses a lower epoch: SQLSTATE CAF04),
-- and every one of its write transactions on a shard begins by holding it (`move_permit_hold`:
-- the permit row FOR SHARE, with its epoch equal to the run's, or CAF04). A claim by a later run
-- waits for the older run's transactions in flight on that shard and refuses every one after,
-- so once the later run has claimed both shards the older one can change nothing on them. Rows
-- are kept after the job ends: a deleted permit would let a run that woke up late claim again.
create table move_permits (
  job_id bigint primary key,
  lease_epoch bigint not null check (lease_epoch > 0),
  updated_at timestamptz not null default clock_timestamp()
);

create function move_permit_claim(p_job bigint, p_epoch bigint) returns void language plpgsql as $$
begin
  insert into move_permits as p (job_id, lease_epoch) values (p_job, p_epoch)
  on conflict (job_id) do update set lease_epoch = excluded.lease_epoch, updated_at = clock_timestamp()
    where p.lease_epoch <= excluded.lease_epoch;
  if not found then
    raise exception 'move job % with lease epoch % may not write on this shard: a later run of the job holds its permit', p_job, p_epoch
      using errcode = 'CAF04', detail = format('permit epoch %s', (select lease_epoch from move_permits where job_id = p_job));
  end if;
end
$$;

create function move_permit_hold(p_job bigint, p_epoch bigint) returns void language plpgsql as $$
declare
  held bigint;
begin
  select lease_epoch into held from move_permits where job_id = p_job for share;
  if held is distinct from p_epoch then
    raise exception 'move job % with lease epoch % may not write on this shard: %', p_job, p_epoch,
        case when held is null then 'it has not claimed the permit' else format('the permit is held by epoch %s', held) end
      using errcode = 'CAF04';
  end if;
end
$$;

-- The moves worker's role (migration 006) claims and holds permits; nobody else needs them.
grant select, insert, update on move_permits to ca_dms_mover;
