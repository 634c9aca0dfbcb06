-- The timeline a replica streams, for the application login. The replica reader
-- (replica-lag.ts) takes a replica for one of its primary's only while both are on one
-- timeline. The WAL receiver's `received_tli` says so at once, but pg_stat_wal_receiver shows
-- its columns only to roles with the privileges of pg_read_all_stats, which ca_dms_app lacks;
-- its fallback, the control file's timelines, moves to a new timeline only at the replica's
-- next restartpoint (up to checkpoint_timeout after a failover), and until then every read
-- went to the new primary.
--
-- So this function reads `received_tli`, and only that, with the rights of its owner: the login
-- that runs the migrations (a superuser locally; on RDS the master user, a member of
-- rds_superuser, which holds pg_monitor and so pg_read_all_stats). The application gains one
-- integer, not the monitoring views. SECURITY DEFINER with search_path pinned to pg_catalog
-- (pg_temp named last), no arguments, EXECUTE revoked from PUBLIC and granted to ca_dms_app
-- alone: the monitor and the mover hold pg_read_all_stats and read the view directly.
--
-- It is created on the primary and replicates with the catalog, so it exists on every replica,
-- owned by the same role. NULL without a WAL receiver (a primary; a replica restoring from the
-- archive) or when its owner may not see the column: the reader then falls back to the control
-- file, as before this migration. Replica-lag.ts calls it when present and executable and falls
-- back to its own SQL otherwise (SQLSTATE 42883 or 42501), so code and migration may be
-- deployed in either order.
create or replace function wal_receiver_timeline() returns integer
  language sql
  stable
  security definer
  set search_path = pg_catalog, pg_temp
as $$
  select received_tli from pg_catalog.pg_stat_wal_receiver
$$;

revoke all on function wal_receiver_timeline() from public;
grant execute on function wal_receiver_timeline() to ca_dms_app;

-- A migration login without the privileges of pg_read_all_stats makes a function that always
-- returns NULL: harmless (the old fallback), but worth saying.
do $$
begin
  if not pg_has_role(current_user, 'pg_read_all_stats', 'usage') then
    raise notice '% lacks the privileges of pg_read_all_stats: wal_receiver_timeline() returns NULL and replicas'' timelines come from their control file', current_user;
  end if;
end
$$;
