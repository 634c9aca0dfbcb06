-- The CA-DMS application's privileges on a shard, and nothing more: a NOLOGIN role that the
-- application's login users are members of (they and their passwords live in Secrets Manager,
-- created by the migrations function; the alternating-users rotation makes its clone a member
-- of the user, so the clone inherits these grants too). The master user stays with the
-- migrations and the moves worker, which create tables, triggers and fence units.
--
-- What the application does on a shard (write-transaction.ts, the documents API, the replica
-- reader): reads and writes users and documents; takes a SHARED lock on its unit's fence rows
-- (SELECT ... FOR SHARE needs UPDATE on at least one column: updated_at only, so it can lock a
-- fence but never open or close one); and, through the change-capture trigger that runs as the
-- writer, reads move_captures and appends to move_changes.
-- Roles belong to the whole server, and shards may share one (tests, small deployments):
-- another database's migration may be creating it at the same moment.
do $$
begin
  begin
    create role ca_dms_app nologin;
  exception when duplicate_object or unique_violation then
    null;
  end;
  execute format('grant usage on schema %I to ca_dms_app', current_schema());
end
$$;

grant select, insert, update, delete on users, documents to ca_dms_app;
grant select, update (updated_at) on write_fences to ca_dms_app;
grant select on move_captures to ca_dms_app;
grant insert on move_changes to ca_dms_app;
grant usage on sequence move_changes_seq_seq to ca_dms_app;
