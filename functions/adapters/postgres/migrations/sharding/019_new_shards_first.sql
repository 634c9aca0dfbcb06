-- A shard named in `ca_dms.new_shards` is accepted before it is looked for (issue #15, review of
-- migration 018; by-hand-cost.test.ts "a shard named in ca_dms.new_shards"). Migration 013's
-- catalog.shard_refusal asked catalog.shard_known first and read the setting only when that
-- answered false. A shard the operator names there is, by the setting's purpose, one the catalog
-- has no record of (a catalog restored from a backup taken before the shard was added): no map,
-- directory entry or move job names it, so shard_known went through every test it has, the last a
-- read of every slot map ever published (one per slot move's flip; no index answers "any map names
-- it", migration 018's header says why), before the setting let it through. On 2 shared cores
-- about 1.5 s per such shard at 20,000 4096-slot maps, linear in the maps: about 7.5 s at 100,000,
-- so a recovery by hand naming two lost shards, made as the refusal itself says (`set local
-- ca_dms.new_shards = ...`), ran past the control login's 10 s statement_timeout (catalog
-- migration 005) and could not be made at all (catalog.publish_slot_map_by_hand, and
-- catalog.repin_by_hand for each such shard). Migration 018 made the owners' checks cheap where
-- the latest map names them; this one is the case 018 left at the old cost that is not a typo.
--
-- Now the setting is read first, then the catalog: the same answer in every case (a shard is
-- accepted when either says so; the refusal, when neither does, is built exactly as before, the
-- same text, SQLSTATE and order of checks for blanks and shard ids first). A CASE evaluates its
-- conditions in order (PostgreSQL docs, "CASE": a WHEN is not evaluated once an earlier one is
-- true), where the order of an OR's arguments is the planner's to choose: the two tests are two
-- WHENs, not one OR.
--
-- Safe on a live catalog and idempotent: `create or replace function` of 013's function, same
-- signature and attributes (STABLE, SECURITY INVOKER, its search_path; EXECUTE revoked from PUBLIC
-- and granted to ca_dms_control by 013, kept), no lock on a table, nothing that needs a superuser.
create or replace function catalog.shard_refusal(p_shard text) returns text
language sql
stable
security invoker
set search_path = pg_catalog, pg_temp
as $$
  select case
    when coalesce(btrim(p_shard), '') = '' then 'the shard must not be empty'
    when p_shard !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' then
      format('the shard %s%s is not a shard id (1 to 63 letters, digits, "_", "." or "-", starting with a letter or digit)', quote_literal(left(p_shard, 64)),
        case when length(p_shard) > 64 then format('... (%s characters)', length(p_shard)) else '' end)
    when p_shard = any (string_to_array(replace(coalesce(current_setting('ca_dms.new_shards', true), ''), ' ', ''), ',')) then null
    when catalog.shard_known(p_shard) then null
    else
      format('the shard %s is named by no slot map, directory entry or move job of this catalog (known: %s): a typo? A shard new to the catalog is known once a move to it is planned or a key is pinned to it; a configured shard the catalog lost the record of (restored from before it was added) is accepted when the transaction names it first: set local ca_dms.new_shards = %s', quote_literal(p_shard), catalog.known_shards(), quote_literal(p_shard))
  end
$$;
