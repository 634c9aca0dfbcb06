-- The mover's bulk transactions (the copy's pages on the target, the clean-up's deletes on the
-- source) skip row triggers where its login may set session_replication_role (move-port.ts
-- bulkBegin): measured with `npm run bench:moves -- --mover-login unprivileged`, a copy under 8
-- writers that fires the fence, capture and foreign-key triggers runs about 5 times slower than
-- one that skips them (docs/moves-benchmark.md).
--
-- Migration 006 grants `set on parameter session_replication_role` to ca_dms_mover, which only a
-- superuser may do: on RDS it is refused, and RDS lets only members of rds_superuser set the
-- parameter. This function, owned by the login that runs the migrations (RDS's master user, a
-- member of rds_superuser; a superuser elsewhere), sets it for the calling transaction only
-- (`set_config(..., true)`; the function's own SET clause is for search_path, so the setting
-- outlives the call until the transaction ends). Only ca_dms_mover may execute it: the same
-- right 006 meant to grant, no more. Where the owner itself may not set the parameter the call
-- fails with 42501 and the mover runs with the triggers firing, as before.
create or replace function mover_replica_role() returns void
  language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
as $$
begin
  perform set_config('session_replication_role', 'replica', true);
end
$$;

revoke all on function mover_replica_role() from public;
grant execute on function mover_replica_role() to ca_dms_mover;
