-- catalog.slot_owner_history (migration 023) filled with the owners of the maps published before
-- 023: for every map, the slots whose owner is distinct from the map before it (every slot of the
-- first map), as 023's triggers record each map since. The review (fence-review.ts) reads the
-- table for a slot only where it holds the slot's owner at the version asked for; until this
-- migration commits it finds none there for any slot a map before 023 gave its owner, and reads
-- the maps as before.
--
-- The fill reads every map once, each beside the one before it (lag over the versions), in a
-- migration of its own after 023 has committed, holding off no writer, as 021's fill of
-- catalog.slot_map_shards: it takes no lock a map insert, a pin or a move waits for (ACCESS SHARE
-- on catalog.slot_maps; its rows' keys are versions of maps committed before 023, which no trigger
-- writes, so it waits for no insert either). Every map committed before 023 is seen here; every
-- map inserted since was recorded by 023's trigger (its rows, seen here too where committed, are
-- computed the same and left as they are: ON CONFLICT DO NOTHING). READ COMMITTED, as the runner
-- begins every migration (migrate.ts; 021 says why). Idempotent: rows added where absent.
insert into catalog.slot_owner_history (slot, from_version, shard_id)
select (u.i - 1)::integer, m.version, u.owner
  from (select version, assignments, lag(assignments) over (order by version) as before from catalog.slot_maps) m
  cross join lateral unnest(m.assignments, m.before) with ordinality as u(owner, before, i)
 where m.before is null or u.owner is distinct from u.before
on conflict do nothing;
