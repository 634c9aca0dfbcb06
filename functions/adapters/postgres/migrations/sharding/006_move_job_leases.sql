-- Who runs a move job, as a lease on the job row instead of a session advisory lock: the lock
-- held a catalog session (an RDS Proxy connection pinned) for the whole move, and lived exactly
-- as long as that session, so it said nothing once a half-open connection outlived its mover.
--
-- A runner claims a job by one compare-and-set (no holder, or the holder's lease expired by the
-- database clock), which increments lease_epoch; it renews lease_expires_at while it runs, and
-- every write it makes to the job row requires lease_epoch to be still its own. A runner killed
-- outright lets its claim lapse at lease_expires_at; another then claims the job (epoch + 1) and
-- resumes it, and the old runner, should it come back, can change nothing: each of its writes
-- finds another epoch. The epoch only grows, so no two claims of a job ever share one.
alter table catalog.move_jobs
  add column lease_holder text,
  add column lease_expires_at timestamptz,
  add column lease_epoch bigint not null default 0;
