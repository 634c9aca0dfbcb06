-- The owner history's list of the maps it holds (catalog.slot_owner_history_maps, migration 028)
-- made true, and a way back for a map it lacks (issue #15, review of 028;
-- fence-review-owner-history-repair.test.ts).
--
-- 028 listed every map there was, recorded or not: a map inserted with the triggers off
-- (`session_replication_role = replica`, a superuser's restore, `pg_restore --disable-triggers`)
-- after 024's fill and before 028 had no rows in the history and was listed all the same, and the
-- review trusted the history over it: maps 1 (slot 0 on A), 2 (slot 0 on B, triggers off, before
-- 028), 3 (recorded) had it answer A alone for slot 0 since version 1 and A since 2 and 3, whose
-- owner is B: the shard whose rows of the slot a reopen must count, left out. Below, every map
-- whose rows in the history are not exactly what 024's statement computes from the maps (a row
-- missing, or one too many or naming another owner: an UPDATE made with the triggers off) is taken
-- off the list, in one statement and one snapshot, holding off no writer (the maps and the history
-- are read, as 024 read them: 1.3 s at 2,000 maps of 4,096 slots and 9.3 s at 10,000, 2 shared
-- cores at load 3.5, linear, as 024's 99-130 s at 100,000; each map's rows are written in its own
-- transaction, so a snapshot sees a map and its rows or neither), and then computed again and
-- listed by the function below, which holds off map changes only for its own rebuilds.
--
-- And a map left off the list (inserted with the triggers off since 028) sent every slot whose
-- last change is at or below it, most of a catalog's slots, to the read of every map since the
-- version asked for, for good: the read 023 replaced (500 slots at version 0 under 5,000 maps, map
-- 2 unlisted: 4.2-4.9 s against 37-53 ms; past the API's 27 s at 20,000 maps,
-- bench/fence-review.ts). catalog.slot_owner_history_repair() computes each unlisted map's rows
-- again and lists it (docs/sharding-spec.md, "Each slot's owner history": run it after such a
-- restore). It takes the history's writer row first (028): a map change in flight is waited for
-- (READ COMMITTED, each statement after it sees that map; at REPEATABLE READ or SERIALIZABLE the
-- call fails 40001 instead, nothing changed, to be sent again), and one made later waits for the
-- repair's commit, so no rebuild here reads the maps without a map another transaction is writing.
-- Each unlisted map costs two maps' rows computed again (its own and the next map's, against it):
-- 100 maps in 145 ms at 2,000 and at 10,000 maps (same machine), the time map publications wait
-- for it (a flip past its fence budget gives its fence up and tries again at its next attempt): a
-- restore of many maps is repaired at a quiet time. The migration login's alone (owner of the
-- catalog): neither the control login nor the application's may call it.
create or replace function catalog.slot_owner_history_repair() returns integer
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v integer;
  repaired integer := 0;
begin
  insert into catalog.slot_owner_history_writer (one, last_change) values (true, clock_timestamp())
  on conflict (one) do update set last_change = excluded.last_change;
  for v in
    select m.version from catalog.slot_maps m
     where not exists (select 1 from catalog.slot_owner_history_maps r where r.version = m.version)
     order by m.version
  loop
    -- Its rows and the next map's (compared with it), and both listed (028's rebuild).
    perform catalog.slot_owner_history_rebuild(v);
    repaired := repaired + 1;
  end loop;
  return repaired;
end
$$;
revoke all on function catalog.slot_owner_history_repair() from public;

-- Every listed map whose rows are not exactly those 024's statement computes (both ways: EXCEPT
-- compares NULL owners as equal), taken off the list. The maps read once (materialized): the rows
-- computed are few (a map's changed slots, the first map's every slot), the read is the cost.
with computed as materialized (
       select (u.i - 1)::integer as slot, m.version as from_version, u.owner as shard_id
         from (select version, assignments, lag(assignments) over (order by version) as before from catalog.slot_maps) m
        cross join lateral unnest(m.assignments, m.before) with ordinality as u(owner, before, i)
        where m.before is null or u.owner is distinct from u.before),
     recorded as materialized (select h.slot, h.from_version, h.shard_id from catalog.slot_owner_history h),
     wrong as ((select * from computed except select * from recorded) union (select * from recorded except select * from computed))
delete from catalog.slot_owner_history_maps r
 where r.version in (select w.from_version from wrong w);

select catalog.slot_owner_history_repair();
