-- The single-column slot indexes of migration 001 are a prefix of the (slot, id) indexes of
-- migration 002, which answer every query by slot as well (counts per slot, the copy's pages,
-- the clean-up's deletes): the planner has no use for them that (slot, id) does not serve. Each
-- one was still maintained on every insert and every non-HOT update, by the application's
-- writers and by a move's COPY into its target, where it was a quarter of the index work per
-- document (`npm run bench:moves`: a 100k-row copy into the target took 3.9-5.1 s with four
-- indexes on documents and 2.3-2.7 s with three, no writers, load 7.8).
drop index users_slot_idx;
drop index documents_slot_idx;
