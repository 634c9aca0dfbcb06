-- One row per slot that a pin changed by hand and a change of the slot's pinned keys serialise on
-- (issue #15, docs/sharding-spec.md section 9, "A pin racing a change of its slot"). A slot map
-- published by hand and a slot move's plan read the directory's keys of the slot once (the keys
-- they keep out: `excluded_keys`); a pin committed after that read and before their commit was not
-- among them, and a first pin of a key to its slot's owner (its route unchanged: nothing fenced)
-- then sat pinned to a shard whose `moved` slot row refused its every write for good ("routing is
-- not converging"), or had its rows copied away from its pin. Now:
-- - a pin (DirectoryStore.set, repinByHand) locks its key's slot's row FOR SHARE after its write,
--   then reads the slot's owner and the slot's move jobs again: a change of the slot that committed
--   meanwhile is seen and the pin refused;
-- - a publication by hand (SlotMapStore, through the shards' pools) locks the rows of the slots it
--   gives away FOR UPDATE before it reads their pinned keys, and a slot move's plan (Mover.plan)
--   locks its slot's row FOR UPDATE before its re-read of the directory: a pin written and not yet
--   committed is waited for, and read.
-- Both hold their lock to the end of their catalog transaction; each wait is bounded (lock_timeout)
-- and refused naming the other change. A row lock, not an advisory lock: only a login that may
-- update this table can take it (catalog migration 007's reason), so the application's login can
-- neither stall pins nor hold off publications and plans.
--
-- The rows of the slots of the maps published so far are inserted here; the stores insert a
-- missing one (`on conflict do nothing`) before locking it, so a catalog whose first map comes
-- later gets them too.
--
-- Safe on a live catalog: a new table, its rows and a grant; every statement can run again.
create table if not exists catalog.slot_pin_locks (
  slot integer primary key check (slot >= 0)
);
insert into catalog.slot_pin_locks (slot)
  select generate_series(0, coalesce((select max(slot_count) from catalog.slot_maps), 0) - 1)
  on conflict do nothing;
grant select, insert, update on catalog.slot_pin_locks to ca_dms_control;
