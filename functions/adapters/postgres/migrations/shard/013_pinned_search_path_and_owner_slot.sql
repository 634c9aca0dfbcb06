-- Two holes through which an ordinary application login could write a row that a move then
-- deletes or carries away from its owner (docs/sharding-spec.md section 9).
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
--
-- 2. Nothing tied a document's `slot` to its owner's. `update documents set owner_id = <a user
--    of another slot>` left `slot` stale and was accepted; a later move of the old slot carried
--    the document to a shard where its owner does not live (an orphan there, invisible to the
--    owner, who stays on the source). The contract says `slot` is the slot of the canonical
--    owner id; the database now enforces it: documents (owner_id, slot) references
--    users (id, slot). The foreign key of migration 001 (owner_id -> users.id, on delete
--    cascade) stays. The new key cascades deletes too, so a user's deletion removes their
--    documents whichever of the two keys' triggers fires first (a NO ACTION key checked before
--    the cascade ran would refuse it); an update of a user's slot that still has documents is
--    refused (a user's slot never changes: it is the hash of the id).
--
--    The key is added NOT VALID: new and updated rows are checked from now on, existing rows
--    are not scanned, so the migration neither fails on a deployment holding rows written
--    wrong before it nor holds the documents table's SHARE ROW EXCLUSIVE lock (taken by ADD
--    FOREIGN KEY, held to the end of this transaction, and blocking every write of documents)
--    for a scan of the whole table. Validating is an operator step (section 9): find and fix
--    the rows the query there lists, then `alter table documents validate constraint
--    documents_owner_slot_fkey`, which takes only SHARE UPDATE EXCLUSIVE (writes go on).
--
--    The referenced key is a unique index on users (id, slot) (id alone is already unique,
--    so this never refuses a row). It is built by CREATE INDEX, which holds SHARE on users:
--    reads of users and writes of documents go on, writes of users wait for the build (it
--    reads the whole users table and sorts it: the longer, the bigger the shard; time it on a
--    copy of the largest shard before deploying). Not `add constraint ... unique`, whose
--    ACCESS EXCLUSIVE lock would block reads of users for the build as well. Its lock waits are
--    bounded by the runner's lock_timeout, like any migration's.
--
--    The mover is unaffected: its bulk copy either skips row triggers (session_replication_role
--    = replica; the source's rows are copied as they are) or upserts a page's owners before its
--    documents; its catch-up upserts users before documents and deletes documents before users;
--    its clean-up and rollback delete documents before their users.
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

create unique index users_id_slot_key on users (id, slot);

alter table documents add constraint documents_owner_slot_fkey
  foreign key (owner_id, slot) references users (id, slot) on delete cascade not valid;

-- 3. The scaling API's exact shard statistics leave out the rows of units a shard holds without
--    owning them (a copy moving in, the original of a unit moved away and not yet cleaned up),
--    judged by the fence rows, so its monitor role reads them.
grant select on write_fences to ca_dms_monitor;
