-- One row that a map published by hand holds FOR SHARE from before it fences the old owners until
-- its catalog transaction ends, and that `ca-dms-scaling shards fences --settle` locks FOR UPDATE
-- NOWAIT before it settles a hand change's write_fences rows (issue #15, docs/sharding-spec.md
-- section 9, "Settling the rows a hand change left"). Taken, the lock tells the review that no
-- hand change through the stores is between its fence and its commit: a row `fenced` with
-- job_id null where the map still names its shard is then one whose change died, and reopening it
-- cannot let a change that is still going to publish find its old owner open. A row lock, not an
-- advisory lock: only a login that may update this table can take it (catalog migration 007's
-- reason), so the application's login can neither hold off a review nor stall hand changes.
--
-- Safe on a live catalog: a new table, its row and a grant; every statement can run again.
create table if not exists catalog.owner_change_review (
  id smallint primary key check (id = 1)
);
insert into catalog.owner_change_review (id) values (1) on conflict do nothing;
grant select, update on catalog.owner_change_review to ca_dms_control;
