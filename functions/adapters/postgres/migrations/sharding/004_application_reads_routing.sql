-- The CA-DMS application routes by itself (the demo backend, any service implementing
-- docs/sharding-spec.md): it reads the slot maps and the directory, never writes them (the
-- control plane publishes maps, the moves worker changes them). Its login is a member of
-- ca_dms_app (shard migration 003), which this database may not have seen yet when the catalog
-- lives on its own server: create it the same tolerant way.
do $$
begin
  begin
    create role ca_dms_app nologin;
  exception when duplicate_object or unique_violation then
    null;
  end;
end
$$;

grant usage on schema catalog to ca_dms_app;
grant select on catalog.slot_maps, catalog.shard_directory to ca_dms_app;
