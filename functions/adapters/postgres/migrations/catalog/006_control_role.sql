-- The control plane's login on the catalog: what the evaluator, the alarm function, the scaling
-- API and the moves worker do there, and nothing more (the master user stays with the
-- migrations function). Those four share one login because they share one code path over these
-- tables (the controller runtime's catalog store, reused by the API and the moves worker):
-- their needs on the catalog are equal. No DDL, no TRUNCATE, no DELETE where none is issued, and
-- schema_migrations stays the migrations' alone.
--
-- catalog-store.ts: scaling_config is appended to (and locked in SHARE ROW EXCLUSIVE mode while
-- a change is checked against the newest version, which PostgreSQL allows only with UPDATE,
-- DELETE or TRUNCATE: UPDATE is the least of them); switches and service state are upserted;
-- decisions, gaps and alarms are appended; switch_events is appended by the trigger on
-- scaling_switches, which runs as the writer. lease-store.ts upserts, extends and deletes leases.
do $$
begin
  begin
    create role ca_dms_control nologin;
  exception when duplicate_object or unique_violation then
    null;
  end;
end
$$;

grant usage on schema catalog to ca_dms_control;
grant select, insert, update on catalog.scaling_config to ca_dms_control;
grant select, insert, update on catalog.scaling_switches, catalog.service_state to ca_dms_control;
grant select, insert on catalog.scaling_decisions, catalog.history_gaps, catalog.scaling_alarms, catalog.switch_events to ca_dms_control;
grant select, insert, update, delete on catalog.leases to ca_dms_control;
grant usage on sequence catalog.scaling_decisions_id_seq, catalog.history_gaps_id_seq, catalog.switch_events_id_seq to ca_dms_control;
