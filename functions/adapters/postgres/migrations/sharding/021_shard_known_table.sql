-- catalog.shard_known answers "a slot map names it" from catalog.slot_map_shards (migration 020),
-- filled here with the owners of every map published before 020 (issue #15; 020 says why). The
-- same answer as 018's in every case: the table holds exactly the shards the maps name (020's
-- triggers), and the directory and the move jobs are asked as before (a directory entry may be
-- deleted or repinned, and its shard then no longer known by it: an index probe,
-- shard_directory_shard_idx; the move jobs, one scan, about 15 ms at 100,000 jobs, as 018
-- measured). The latest map is no longer read: the table holds its owners. A typo, on 2 cores
-- loaded by other work: catalog.shard_known 16.9 s at 100,000 4096-slot maps with 018's (past the
-- control login's 10 s statement_timeout), 4.5 ms with this one; a map by hand naming it
-- (bench/slot-map-by-hand.ts --maps 20000) refused in 2.7 s before, 4 ms after with no move jobs
-- and 75 ms with 100,000 (the jobs read here and by the refusal's list of known shards).
--
-- The fill reads every map once (about 4 minutes at 100,000 maps on 2 cores loaded by other work;
-- every owner of every map through one DISTINCT, 409,600,000 of them), in a
-- migration of its own after 020 has committed, holding off no writer: it takes no lock a map
-- insert, a pin or a move waits for (ACCESS SHARE on catalog.slot_maps, and rows of the table
-- that 020's trigger inserts too: a map naming a new shard while it runs waits at most for this
-- migration's commit). Every map committed before 020 is seen here; every map inserted since was
-- recorded by 020's trigger. Until this migration commits, catalog.shard_known answers as 018's.
-- READ COMMITTED, as the runner begins every migration (migrate.ts): at a database's default of
-- SERIALIZABLE, this read of every map and a flip committed meanwhile that looked in the table for
-- its new shard were each other's read/write conflict, and the migration failed with 40001 (about
-- 18 s of reading at 20,000 maps, 2 loaded cores) at every deploy during which a move flipped.
--
-- Safe on a live catalog and idempotent: rows added where absent, `create or replace function` of
-- 018's function, same signature and attributes (its grants kept), nothing that needs a superuser.
select catalog.slot_map_shards_add(array(select distinct a from catalog.slot_maps m, unnest(m.assignments) a));

-- Migration 018's function, "a slot map, any version" and "the latest map" read from the table.
create or replace function catalog.shard_known(p_shard text) returns boolean
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
  select exists (select 1 from catalog.slot_map_shards k where k.shard_id = p_shard)
      or exists (select 1 from catalog.shard_directory d where d.shard_id = p_shard)
      or exists (select 1 from catalog.move_jobs j where j.from_shard = p_shard or j.to_shard = p_shard)
$$;
