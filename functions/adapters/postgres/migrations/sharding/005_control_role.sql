-- The control plane's login on the routing tables (see catalog migration 006 for the login):
-- slot-map-store.ts publishes new slot maps (appends), directory-store.ts sets and removes
-- overrides, the mover plans, advances and finishes move jobs. The catalog may live on a server
-- this set reaches before the catalog set's role exists there: create it the same tolerant way.
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
grant select, insert on catalog.slot_maps to ca_dms_control;
grant select, insert, update, delete on catalog.shard_directory to ca_dms_control;
grant select, insert, update on catalog.move_jobs to ca_dms_control;
grant usage on sequence catalog.move_jobs_id_seq to ca_dms_control;
