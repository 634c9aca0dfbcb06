-- The moves worker may terminate a backend of another login (pg_signal_backend), so that a shard
-- connection it gave up (abandonConnection, deadline.ts) is stopped after a rotation of its secret.
--
-- A statement that ignores the cancel request sent when the mover gives its connection up is
-- terminated from another connection of the same pool. The mover's logins rotate with
-- alternating users (ca_dms_mover_user and ca_dms_mover_user_clone, both members of
-- ca_dms_mover, neither a member of the other: app-role.ts): once the secret names the other
-- user, the pool's new connections log in as it, and PostgreSQL refuses it the terminate
-- ("permission denied to terminate process": only a member of the backend's own role, or of
-- pg_signal_backend, may signal it). The backend then went on holding its locks, its transaction,
-- the job's permit and a connection slot
-- (test/integration/sharding/moves-abandon-cancels-query.test.ts).
--
-- pg_signal_backend lets the mover cancel or terminate any backend but a superuser's. It uses it
-- only on the pid of a connection it opened itself, of that connection's login, started before
-- that connection was checked out (deadline.ts). Granting it takes ADMIN OPTION on it, which
-- RDS's rds_superuser holds for its members, the master among them (docs/infrastructure.md). A
-- login refused the grant gets a notice: the mover then terminates only backends of the login its
-- pool logs in with at the time, as before this migration.
do $$
begin
  grant pg_signal_backend to ca_dms_mover;
exception when insufficient_privilege then
  raise notice 'pg_signal_backend not granted to ca_dms_mover: after a rotation of its login, a connection the mover gives up whose statement ignores the cancel request is left to end by itself';
end
$$;
