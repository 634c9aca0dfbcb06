-- A hole through which an ordinary application login could write a row that a move then
-- deletes (docs/sharding-spec.md section 9); the other one, a document's slot not tied to its
-- owner's, is closed by migrations 014 and 015.
--
-- 1. The fence and capture triggers named their tables unqualified. They run as the invoker,
--    with the invoker's search_path, and for tables `pg_temp` is searched first unless it is
--    named. Any login that may create temporary tables (PUBLIC may, by default) could
--    `create temp table write_fences (...)` and `move_captures (...)`: its writes into a fenced
--    or moved unit then read the empty temporary tables, were accepted and not captured, and the
--    move's clean-up deleted them after they were acknowledged. Every function of the shard
--    migrations that reads or writes a table now runs with search_path pinned to the shard's
--    schema, with pg_temp named last (so never before it): the fence (004, 007, 012), the
--    capture (002), the TRUNCATE guard (004) and the move permits (010). A function added later
--    must be created with the same `set search_path`.
--
--    Also, PUBLIC's TEMP privilege on the shard's database is revoked: nothing of this project
--    creates temporary tables (the mover, the writers, the readers, the monitor and the
--    migrations do not; the controller's session-state test refuses them), the database's
--    owner and superusers keep it, and a login that needs it can be granted it by name. It is
--    defence in depth, not the fix: the pinned search_path holds where the revoke is not
--    allowed (a migration login that neither owns the database nor holds TEMP with grant
--    option only gets a notice) or is undone by a later grant.
do $$
declare
  fn text;
begin
  foreach fn in array array[
    'enforce_write_fence()',
    'record_move_change()',
    'refuse_truncate_during_move()',
    'move_permit_claim(bigint, bigint)',
    'move_permit_hold(bigint, bigint)'
  ] loop
    execute format('alter function %I.%s set search_path = %I, pg_temp', current_schema(), fn, current_schema());
  end loop;
end
$$;

do $$
begin
  execute format('revoke temporary on database %I from public', current_database());
exception when insufficient_privilege then
  raise notice 'TEMP on database % not revoked from PUBLIC (this login may not): the triggers'' pinned search_path still holds', current_database();
end
$$;

-- 2. The scaling API's exact shard statistics leave out the rows of units a shard holds without
--    owning them (a copy moving in, the original of a unit moved away and not yet cleaned up),
--    judged by the fence rows, so its monitor role reads them.
grant select on write_fences to ca_dms_monitor;
