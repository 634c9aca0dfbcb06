-- The writers of catalog.slot_owner_history (migration 023) taken one at a time (issue #15, review
-- of 023 and 024; fence-review-owner-history-races.test.ts). Each map's rows are the slots whose
-- owner differs from "the map before it", which the CAF08 trigger (and
-- catalog.slot_owner_history_rebuild, for a map inserted below others, updated or deleted) reads
-- with its own snapshot. Two statements changing the maps at once each read the maps without the
-- other's: a map inserted while a map of a lower version was inserted and not yet committed (a
-- flip in flight, and an INSERT of the next version after it; the stores' compare-and-set makes
-- the two the same version, but the control login may INSERT any version, as may a superuser) was
-- compared with the map before both, and a slot the first map changed and the second gave back
-- was recorded at neither: with maps 1 (slot 0 on A), 2 (slot 0 on B, in flight) and 3 (slot 0 on
-- A), the review answered B alone for slot 0 since version 3, not A, whose rows of the slot a
-- reopen would then not count (a writer acknowledged out of readers' sight). Likewise a map
-- inserted while the latest was deleted (a superuser's) was compared with the deleted map. At READ
-- COMMITTED and REPEATABLE READ alike; SERIALIZABLE already failed one of the two at its commit
-- (40001, its reads' conflict).
--
-- Now each map inserted, updated or deleted first updates the one row of
-- catalog.slot_owner_history_writer, which its transaction then holds to its commit: a second
-- such change waits for the first transaction to end. At READ COMMITTED its trigger's reads (each
-- statement of the trigger functions takes a new snapshot) then see the first's map, and compare
-- with it. At REPEATABLE READ and SERIALIZABLE, whose snapshot cannot see a map committed after it
-- began, the update of a row another transaction updated since fails, "could not serialize access
-- due to concurrent update" (40001), nothing published: the transaction, sent again as any
-- serialization failure is, sees the map (SlotMapStore reads it as a lost compare-and-set). An
-- AFTER ROW trigger, fired before the others (triggers of an event fire in the order of their
-- names: slot_maps_history_writer before slot_maps_owner_kept and slot_owner_history_changed), not
-- a BEFORE one: a publication of a version taken meanwhile still fails on the maps' primary key
-- first, 23505 at every level as before (020 kept it so at SERIALIZABLE; SlotMapStore reads it as
-- a lost compare-and-set), and an insert ON CONFLICT DO NOTHING that is skipped takes nothing. So
-- only inserts of different versions, and updates and deletes, wait where they did not; at
-- REPEATABLE READ the later of two such inserts now fails where it went through (sharding 020's
-- "two transactions naming the same new shards", by-hand-cost-equivalence.test.ts), since its
-- snapshot cannot see the map before it. TRUNCATE takes ACCESS EXCLUSIVE and empties the history:
-- nothing to take. An insert with the triggers off (`session_replication_role = replica`) takes
-- nothing and records nothing (below).
--
-- Safe on a live catalog: new tables and a new trigger, created under the SHARE ROW EXCLUSIVE
-- lock CREATE TRIGGER takes (the map inserts in flight are waited for and later ones held off to
-- this migration's commit, as 020 and 023 did).
create table if not exists catalog.slot_owner_history_writer (
  one boolean primary key default true check (one),
  last_change timestamptz not null default now()
);
insert into catalog.slot_owner_history_writer (one) values (true) on conflict do nothing;
revoke all on catalog.slot_owner_history_writer from public;

-- An upsert, not an UPDATE: a row deleted by hand is put back, not silently no writer taken.
create or replace function catalog.slot_owner_history_writer_take() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  insert into catalog.slot_owner_history_writer (one, last_change) values (true, clock_timestamp())
  on conflict (one) do update set last_change = excluded.last_change;
  return null;
end
$$;
revoke all on function catalog.slot_owner_history_writer_take() from public;

drop trigger if exists slot_maps_history_writer on catalog.slot_maps;
create trigger slot_maps_history_writer after insert or update of version, assignments or delete on catalog.slot_maps
  for each row execute function catalog.slot_owner_history_writer_take();

-- The maps whose rows the history holds (fence-review-owner-history-races.test.ts, "triggers off").
-- A map inserted with the triggers off (`session_replication_role = replica`: a superuser's
-- restore, `pg_restore --disable-triggers`) records nothing, and 023 had the review tell it by
-- finding no row of the slot at or below the version asked for. It finds one wherever an earlier
-- map was recorded: maps 1 (slot 0 on A, recorded), 2 (slot 0 on B, triggers off), 3 (recorded,
-- slot 0 left on B) had the review answer A alone for slot 0 since version 1 and A since version
-- 2 or 3, whose owner is B: the shard whose rows of the slot a reopen must count left out. Now
-- each map whose rows were written (by its trigger, by a rebuild, by the lines below) has a row
-- here, and the review trusts a slot's history only above the highest map that has none
-- (fence-review.ts, ownersOfSlotsFromHistory: its row at or below the first map at or past the
-- version asked for must be above every unrecorded map), reading the maps for the others, as
-- for a slot whose history it lacks. An UPDATE of a map with the triggers off is not seen (its
-- version stays listed here): the maps are append-only for every login but a superuser.
create table if not exists catalog.slot_owner_history_maps (
  version integer primary key
);
revoke all on catalog.slot_owner_history_maps from public;
grant select on catalog.slot_owner_history_maps to ca_dms_control;

-- 023's, and the versions' rows here kept with theirs.
create or replace function catalog.slot_owner_history_rebuild(p_version integer) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  next_version integer := (select min(m.version) from catalog.slot_maps m where m.version > p_version);
begin
  delete from catalog.slot_owner_history h where h.from_version = p_version or h.from_version = next_version;
  insert into catalog.slot_owner_history (slot, from_version, shard_id)
  select (u.i - 1)::integer, m.version, u.owner
    from catalog.slot_maps m
    left join lateral (select p.assignments from catalog.slot_maps p where p.version < m.version order by p.version desc limit 1) p on true
    cross join lateral unnest(m.assignments, p.assignments) with ordinality as u(owner, before, i)
   where m.version in (p_version, next_version)
     and (p.assignments is null or u.owner is distinct from u.before);
  delete from catalog.slot_owner_history_maps r where r.version = p_version or r.version = next_version;
  insert into catalog.slot_owner_history_maps (version)
  select m.version from catalog.slot_maps m where m.version in (p_version, next_version);
end
$$;

-- 023's, and the map's row here.
create or replace function catalog.slot_owner_history_record(p_version integer, p_assignments text[], p_slots integer[], p_owners text[]) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  -- max(), not `exists (... where version > p_version)`: 023 says why.
  if (select max(m.version) from catalog.slot_maps m) > p_version then
    perform catalog.slot_owner_history_rebuild(p_version);
    return;
  elsif p_assignments is not null then
    insert into catalog.slot_owner_history (slot, from_version, shard_id)
    select (u.i - 1)::integer, p_version, u.owner from unnest(p_assignments) with ordinality as u(owner, i);
  elsif p_slots is not null then
    insert into catalog.slot_owner_history (slot, from_version, shard_id)
    select u.slot, p_version, u.owner from unnest(p_slots, p_owners) as u(slot, owner);
  end if;
  insert into catalog.slot_owner_history_maps (version) values (p_version) on conflict do nothing;
end
$$;

-- 023's, a TRUNCATE emptying this table too.
create or replace function catalog.slot_owner_history_changed() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op = 'TRUNCATE' then
    delete from catalog.slot_owner_history;
    delete from catalog.slot_owner_history_maps;
    return null;
  end if;
  perform catalog.slot_owner_history_rebuild(old.version);
  if tg_op = 'UPDATE' and new.version is distinct from old.version then
    perform catalog.slot_owner_history_rebuild(new.version);
  end if;
  return null;
end
$$;

-- Every map there is, under the SHARE ROW EXCLUSIVE lock the CREATE TRIGGER above holds to this
-- migration's commit (every map insert in flight committed before it, its rows recorded by 023's
-- trigger; every later one runs the functions above): each was recorded by 023's trigger or filled
-- by 024, which this migration follows (all but a map inserted with the triggers off between 024
-- and this migration, of the same deploy: listed here, its rows missing; run 024's statement again
-- after such a restore, which adds them). 0.27 s at 100,000 maps (2 shared cores, load 7), the
-- time map inserts wait for it; the review's check for unlisted maps then 28-30 ms of its read
-- (docs/sharding-spec.md, "Each slot's owner history").
insert into catalog.slot_owner_history_maps (version)
select m.version from catalog.slot_maps m
on conflict do nothing;
