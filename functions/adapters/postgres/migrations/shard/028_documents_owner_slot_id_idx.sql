-- A directory move reads its key's rows as `owner_id = <key> and slot = <key's slot>` (move-port.ts
-- unitFilter, kind 'directory'): the target's count, each copy page (`order by id limit
-- copyBatchRows` after the previous page's last id), each clean-up or rollback batch (the same, by
-- tuple id). No index matched both the key and the order: the planner read a page either through
-- `documents (slot, id)` (migration 002), the key's whole slot in id order, the other keys' rows
-- filtered out, or through `documents (owner_id)` (migration 001), every remaining row of the key,
-- sorted, for each page. bench/directory-unit-plans.ts (2 shared cores, all cached; a slot of
-- 220,000 documents, the key 20,000 of them in random heap order, pages of 2,000): the first page
-- read 22,293 buffers in 111 ms by the slot's range, a later one 4,720 in 48 ms (sorted); with
-- `(owner_id, slot, id)` each read 2,022-2,024 buffers in 3-5 ms, its own rows in order, and
-- stopped at the page's end. Migration 029 adds the same for document_keys.
--
-- It also answers everything `documents (owner_id)` did (an owner's documents, the foreign keys'
-- cascades from users by id and by (id, slot)), which migration 030 drops: kept, it would be one
-- more index to maintain on every write of documents and every row a move copies in (migration 009
-- measured a quarter of the index work per document for one such index). Not here: this
-- migration holds SHARE on documents until its commit, and a DROP INDEX after the build would ask
-- for ACCESS EXCLUSIVE while holding it. A writer that read documents during the build (a keyed
-- POST's claim reads documents, then inserts one) holds ACCESS SHARE and waits for ROW EXCLUSIVE
-- behind the SHARE: a deadlock, which the migration lost after the whole build, rolled back and
-- built again on each retry, writes waiting out every build (review of this migration,
-- owner-index-migration-locks.test.ts).
--
-- Migrations run in a transaction (migrate.ts), so not CONCURRENTLY: CREATE INDEX holds SHARE on
-- documents until the commit, so reads of documents go on and writes of documents (the API's, a
-- move's copy and catch-up) wait for the build, the longer the bigger the shard (time it on a
-- copy of the largest shard before deploying). On a shard too large for that, an operator may
-- build it first by hand, outside any transaction, writes going on meanwhile (about twice the
-- work, and the build waits for every transaction older than it):
--   create index concurrently if not exists documents_owner_slot_id_idx on documents (owner_id, slot, id);
-- this migration then finds it and builds nothing. A CONCURRENTLY build that failed leaves an
-- INVALID index under the name, which IF NOT EXISTS would take for the index and migration 030's DROP
-- would leave the table without any index on the owner: refused instead (drop it, build again).
-- The SHARE lock's wait is bounded by the runner's lock_timeout (a wait given up rolls the
-- migration back, and it is tried again); the build itself is not.
do $$
begin
  if exists (select 1 from pg_catalog.pg_index i where i.indexrelid = pg_catalog.to_regclass('documents_owner_slot_id_idx') and not i.indisvalid) then
    raise exception 'the index documents_owner_slot_id_idx exists but is invalid (a CREATE INDEX CONCURRENTLY that failed): drop it (drop index concurrently documents_owner_slot_id_idx), then run the migrations again';
  end if;
end
$$;
create index if not exists documents_owner_slot_id_idx on documents (owner_id, slot, id);
