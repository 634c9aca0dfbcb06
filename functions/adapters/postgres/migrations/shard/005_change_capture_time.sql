-- When each change was captured, so that how far a move's target trails its source (the age of
-- the oldest change not yet applied) can be read on the source: `npm run bench:moves` samples it
-- as the catch-up lag. clock_timestamp(), not now(): a long writer transaction's changes are as
-- old as the statement that made them, not as the transaction.
alter table move_changes add column captured_at timestamptz not null default clock_timestamp();
