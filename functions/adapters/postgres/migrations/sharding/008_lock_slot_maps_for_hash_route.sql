-- A directory move's flip of a key without an entry reads its slot's owner under a SHARE lock on
-- catalog.slot_maps (move-port.ts, LOCK_SLOT_MAPS_FOR_HASH_ROUTE), so that no map is published
-- between that read and the flip's commit. LOCK TABLE in SHARE mode needs UPDATE, DELETE or
-- TRUNCATE on the table (MAINTAIN from PostgreSQL 17): ca_dms_control has only SELECT and INSERT,
-- which allow ACCESS SHARE and ROW EXCLUSIVE, and must keep the map append-only. The lock is
-- therefore taken by this function, as the table's owner, in the caller's transaction (a lock is
-- held to the end of the transaction that took it, not of the function), bounded by the caller's
-- statement_timeout and lock_timeout like any statement of the flip. It takes that one lock and
-- nothing else, so granting it gives no way to change the map.
create function catalog.lock_slot_maps_for_hash_route() returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  lock table catalog.slot_maps in share mode;
end
$$;

revoke all on function catalog.lock_slot_maps_for_hash_route() from public;
grant execute on function catalog.lock_slot_maps_for_hash_route() to ca_dms_control;
