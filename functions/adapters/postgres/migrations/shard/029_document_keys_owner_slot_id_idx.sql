-- Migration 028's index for document_keys, in a migration (and so a transaction) of its own: two
-- CREATE INDEX in one transaction would hold SHARE on documents while waiting for SHARE on
-- document_keys, and deadlock with a writer that wrote document_keys and then documents (the
-- moves' catch-up applies changes in their order), as migrations 014 and 015 did together.
--
-- A directory move's pages of its key's key records (`owner_id = <key> and slot = <key's slot>
-- order by id`, after the previous page's last id) read the key's slot's (slot, id) range
-- (migration 021's document_keys_slot_id_idx), or every key record of the key through
-- document_keys_owner_created_idx and sorted them, for each page: bench/directory-unit-plans.ts,
-- as for documents. `document_keys_owner_created_idx` stays: the pruning of an owner's expired
-- key records reads it by age (documents-api.ts), which this index does not order.
--
-- Not CONCURRENTLY (migrations run in a transaction): CREATE INDEX holds SHARE on document_keys
-- until the commit, reads going on and keyed writes waiting for the build; on a large shard an
-- operator may build it first by hand (create index concurrently if not exists
-- document_keys_owner_slot_id_idx on document_keys (owner_id, slot, id)), which this finds.
do $$
begin
  if exists (select 1 from pg_catalog.pg_index i where i.indexrelid = pg_catalog.to_regclass('document_keys_owner_slot_id_idx') and not i.indisvalid) then
    raise exception 'the index document_keys_owner_slot_id_idx exists but is invalid (a CREATE INDEX CONCURRENTLY that failed): drop it (drop index concurrently document_keys_owner_slot_id_idx), then run the migrations again';
  end if;
end
$$;
create index if not exists document_keys_owner_slot_id_idx on document_keys (owner_id, slot, id);
