-- Why a cancellation of the move was refused, kept for the life of the job. A cancel recorded
-- before the catalog came to route the unit to the move's target is refused by the rollback
-- (deleting the target's copy would hide the rows its readers find there), and the move goes on to
-- finish on the target. `error` said so, but every later transition clears `error`: a move
-- finished by a later run than the refusing one ended `done` with nothing saying that its cancel
-- had been refused. Written once, by the refusal, and never cleared.
alter table catalog.move_jobs add column cancel_refused text;
