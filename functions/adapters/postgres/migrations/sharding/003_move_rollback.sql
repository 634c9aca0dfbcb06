-- A rollback is decided in the same catalog transaction that checks the map still names the
-- source (compare-and-set against the flip, functions/adapters/postgres/move-port.ts). Once
-- decided it is recorded here, so a mover killed half-way through the rollback finishes it with
-- the same outcome, and a flip can never follow it.
alter table catalog.move_jobs
  add column rollback_to text check (rollback_to in ('failed', 'cancelled')),
  -- How many times the cutover gave up because the fence could not be taken within its budget.
  add column fence_timeouts integer not null default 0;
