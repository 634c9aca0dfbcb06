-- The mover reads the source's timeline history at a move's fence (issue #15). A read-your-writes
-- token of shard A names a write A's primary acknowledged; when A then fails over to a replica
-- that had not received it and the write's unit moves off A afterwards, the move copies A's new
-- timeline, without the write. The mover records, with the move job (sharding migration 014),
-- the timeline A was on when it fenced the unit and that timeline's history file, so that a read
-- with the token on the unit's new shard can tell a write lost in that failover (410) from one
-- that never existed (docs/sharding-spec.md, "A write lost in a failover"). Migration 027 granted
-- timeline_history() to ca_dms_app only; the mover's login is a member of ca_dms_mover.
-- Without this grant (the code deployed first) the mover records no history: reads answer as
-- before.
do $migration$
declare
  nsp constant name := (select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = 'move_changes'::regclass);
begin
  execute format('grant execute on function %I.timeline_history() to ca_dms_mover', nsp);
end
$migration$;
