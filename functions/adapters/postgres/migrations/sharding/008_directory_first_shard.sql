-- Where a directory-placed key's rows began: the shard of its first entry, never changed by
-- later moves of the key. A replica vouches for a unit it shows no fence row of only on the
-- unit's first owner (docs/sharding-spec.md section 9, Readers): fence rows are never deleted,
-- so a snapshot of that shard without a row predates every move of the unit, while any other
-- shard gets its row (`incoming`) before a move copies anything there. For a hash-routed key the
-- first owner is the slot's owner in slot map version 1; for a directory-placed key it is this
-- column. Entries made before this migration have none (null): their reads on a replica without
-- the key's fence row go to the primary, as they did.
alter table catalog.shard_directory add column first_shard text;
