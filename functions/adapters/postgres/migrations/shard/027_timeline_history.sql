-- The history of the primary's timeline, for the application login (issue #15). After a failover
-- (a replica promoted: timeline N) a read-your-writes token of an ancestor timeline whose LSN is
-- past where that timeline ends in N's past names a write the old primary acknowledged and the
-- promoted replica never received (asynchronous replication): the write is gone, and the read
-- answers so (410) instead of "not found" (replica-reader.ts; docs/sharding-spec.md,
-- read-your-writes tokens). Where each ancestor ends is in N's history file,
-- `pg_wal/<N, 8 upper-case hex digits>.history`, one line `<parent tli>\t<switchpoint>\t<reason>`
-- per ancestor; the reader parses it (core/sharding/timeline-history.ts) and keeps it for the
-- life of the process: a timeline's history never changes.
--
-- Reading the file takes pg_read_file, whose EXECUTE PostgreSQL revokes from PUBLIC (superusers
-- only, unless granted; pg_read_server_files matters only for paths outside the data directory,
-- and this one is inside it). So this function reads that one file, and only that one (its name is
-- built from the server's own timeline, never from an argument), with the rights of its owner:
-- the login that runs the migrations (a superuser locally). On RDS the master user is no superuser
-- and is not known to hold EXECUTE on pg_read_file (docs/sharding-spec.md cites what AWS says):
-- the function then answers the timeline with a NULL history, and reads keep the answer they gave
-- before this migration. SECURITY DEFINER with search_path pinned to pg_catalog (pg_temp last),
-- no arguments, EXECUTE revoked from PUBLIC and granted to ca_dms_app alone, as in migration 017.
--
-- No row on a server in recovery (a replica: the reader asks primaries only). Timeline 1 has no
-- history: an empty one. A history file that is not there (58P01) or a right the owner lacks
-- (42501) is a NULL history, never an error. The reader also treats the function's absence
-- (42883, code deployed before the migration) or a login without EXECUTE (42501) as "no history",
-- so code and migration may be deployed in either order.
--
-- Created beside the shard's tables (the schema of move_changes), as migrations 020-022 create
-- theirs: a schema named like the migration login, created later, moves current_schema() away
-- from where the application's search_path looks.
do $migration$
declare
  nsp constant name := (select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = 'move_changes'::regclass);
begin
  execute replace($fn$
create or replace function @S@.timeline_history() returns table (timeline bigint, history text)
  language plpgsql
  volatile
  security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  current_tli bigint;
begin
  if pg_is_in_recovery() then
    return;
  end if;
  current_tli := ('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::bigint;
  timeline := current_tli;
  if current_tli = 1 then
    history := '';
    return next;
    return;
  end if;
  begin
    -- PostgreSQL names history files with upper-case hex (TLHistoryFileName: %08X.history).
    history := pg_read_file('pg_wal/' || upper(lpad(to_hex(current_tli), 8, '0')) || '.history');
  exception
    when insufficient_privilege or undefined_file then
      history := null;
  end;
  return next;
end
$$
$fn$, '@S@', quote_ident(nsp));
  execute format('revoke all on function %I.timeline_history() from public', nsp);
  execute format('grant execute on function %I.timeline_history() to ca_dms_app', nsp);
end
$migration$;

-- A migration login without EXECUTE on pg_read_file makes a function whose history is always
-- NULL: harmless (reads answer as before this migration), but worth saying.
do $$
begin
  if not has_function_privilege(current_user, 'pg_catalog.pg_read_file(text)', 'execute') then
    raise notice '% may not execute pg_read_file(text): timeline_history() answers a NULL history, and a read token of a write lost in a failover reads as not found', current_user;
  end if;
end
$$;
