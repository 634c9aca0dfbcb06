-- The recoveries by hand of migrations 011 and 012 check their arguments as the TypeScript stores
-- do (issue #15, by-hand-arguments.test.ts). An operator who calls them in SQL does not go
-- through DirectoryStore.repinByHand or SlotMapStore.publishByHand, and before this migration:
--   * catalog.repin_by_hand(key, shard, reason) pinned a key to a shard of blanks (' ', refused
--     only when empty) or to a shard id nobody knows (a typo, 'shard_02' for 'shard_002'): the
--     key, moved and so past every other way of changing its pin, then routed to a shard no
--     router has ("shard ... is not configured" on every read and write of it);
--   * catalog.publish_slot_map_by_hand(version, assignments, reason) published a map with a NULL
--     or blank owner, an owner nobody knows, a two-dimensional array or one whose subscripts do
--     not start at 1: every process that then read the current map refused it ("invalid slot
--     map", SlotMapStore.current), and every route by hash failed until a map after it was
--     published (a NULL or blank owner; other shapes are read as another map than the one meant);
--   * catalog.repin_by_hand read a key `urn:uuid:` followed by any spelling PostgreSQL's uuid type
--     reads (braces, no hyphens) as that UUID, where docs/sharding-spec.md section 1 and
--     core/sharding/keys.ts canonicalKey accept only `urn:uuid:` and the 8-4-4-4-12 form: such a
--     key was pinned under another key than the one every router looks up.
--
-- What "a shard the catalog knows" is: the catalog has no list of the configured shards (they are
-- in the configuration, which the catalog cannot see), so a shard is known when a slot map (any
-- version), a directory entry or a move job (either side) names it. Every shard a move or a
-- published map ever involved is known; a shard added to the configuration is known once a move
-- to it is planned (hash routing gives it slots by moves, section 4) or a key is pinned to it
-- (DirectoryStore.set). A shard id must also be the configuration's form: 1 to 63 letters, digits,
-- '_', '.' or '-', starting with a letter or digit (core/sharding/config.ts).
-- A configured shard the catalog lost the record of (a catalog restored from a backup taken
-- before the shard was added, while the shards' fences say units moved there) would otherwise be
-- refused with no way through but a side effect: the operator names such shards first in the
-- transaction's setting `ca_dms.new_shards` (comma-separated, `set local` before the call); the
-- refusal says how. A refused argument is quoted up to 64 characters, with its length (a shard
-- argument of a megabyte made a megabyte of error for the client and the server log).
--
-- Refusals are SQLSTATE 22023 (invalid_parameter_value), as 011's and 012's, nothing written, the
-- message naming every argument that is wrong.

-- The canonical text of a routing key, as core/sharding/keys.ts canonicalKey writes it
-- (docs/sharding-spec.md section 1): a UUID in any form PostgreSQL's uuid type reads, or
-- `urn:uuid:` (any case) and the 8-4-4-4-12 form, becomes the lowercase hyphenated form; any
-- other text is the key as given. The letter classes are spelled out (no case-insensitive match):
-- a database whose collation folds case beyond ASCII reads them the same.
create function catalog.canonical_key(p_key text) returns text
language plpgsql
immutable
strict
-- Its EXCEPTION block starts a subtransaction, which PostgreSQL requires parallel-unsafe functions
-- for (docs: Parallel Labeling for Functions and Aggregates).
parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_key ~ '^[uU][rR][nN]:[uU][uU][iI][dD]:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$' then
    return substr(p_key, 10)::uuid::text;
  end if;
  return p_key::uuid::text;
exception when invalid_text_representation then
  return p_key; -- not a UUID: its text is the key
end
$$;

grant execute on function catalog.canonical_key(text) to ca_dms_control;

-- Whether a slot map (any version), a directory entry or a move job names `p_shard`.
create function catalog.shard_known(p_shard text) returns boolean
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
  select exists (select 1 from catalog.shard_directory d where d.shard_id = p_shard)
      or exists (select 1 from catalog.move_jobs j where j.from_shard = p_shard or j.to_shard = p_shard)
      or exists (select 1 from catalog.slot_maps m where p_shard = any (m.assignments))
$$;

revoke all on function catalog.shard_known(text) from public;
grant execute on function catalog.shard_known(text) to ca_dms_control;

-- The shards the catalog knows, in code-point order (for messages): the latest map's owners, the
-- directory's shards and the move jobs' (older maps' owners are known too, but not listed).
create function catalog.known_shards() returns text
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
  select coalesce(string_agg(s, ', ' order by s collate "C"), 'none')
    from (select unnest(m.assignments) as s from (select assignments from catalog.slot_maps order by version desc limit 1) m
          union select d.shard_id from catalog.shard_directory d
          union select j.from_shard from catalog.move_jobs j
          union select j.to_shard from catalog.move_jobs j) k
$$;

revoke all on function catalog.known_shards() from public;
grant execute on function catalog.known_shards() to ca_dms_control;

-- Why `p_shard` may not be written, or null: not a shard id, or one the catalog does not know.
create function catalog.shard_refusal(p_shard text) returns text
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
    when catalog.shard_known(p_shard)
      or p_shard = any (string_to_array(replace(coalesce(current_setting('ca_dms.new_shards', true), ''), ' ', ''), ',')) then null
    else
      format('the shard %s is named by no slot map, directory entry or move job of this catalog (known: %s): a typo? A shard new to the catalog is known once a move to it is planned or a key is pinned to it; a configured shard the catalog lost the record of (restored from before it was added) is accepted when the transaction names it first: set local ca_dms.new_shards = %s', quote_literal(p_shard), catalog.known_shards(), quote_literal(p_shard))
  end
$$;

revoke all on function catalog.shard_refusal(text) from public;
grant execute on function catalog.shard_refusal(text) to ca_dms_control;

-- Migration 011's function, with the key read by catalog.canonical_key and the shard checked by
-- catalog.shard_refusal (above). Everything else as before.
create or replace function catalog.repin_by_hand(p_key text, p_shard text, p_reason text) returns catalog.shard_directory
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
  entry catalog.shard_directory;
  shard_wrong text := catalog.shard_refusal(p_shard);
begin
  p_key := catalog.canonical_key(p_key);
  if coalesce(p_key, '') = '' or shard_wrong is not null or coalesce(btrim(p_reason), '') = '' then
    raise exception 'catalog.repin_by_hand(key, shard, reason): %; nothing was changed', concat_ws('; ',
        case when coalesce(p_key, '') = '' then 'the key must not be empty' end,
        shard_wrong,
        case when coalesce(btrim(p_reason), '') = '' then 'the reason must not be empty (it is recorded in updated_by)' end)
      using errcode = '22023';
  end if;
  perform set_config('ca_dms.pin_writer', 'by hand: ' || p_reason, true);
  insert into catalog.shard_directory as d (key, shard_id, updated_by)
  values (p_key, p_shard, format('%s by hand: %s', session_user, btrim(p_reason)))
  on conflict (key) do update set shard_id = excluded.shard_id, updated_by = excluded.updated_by,
    updated_at = now(), version = d.version + 1
  returning d.* into entry;
  perform set_config('ca_dms.pin_writer', '', true);
  return entry;
end
$$;

-- Migration 012's function, with its arguments checked: a reason, a version >= 1, and
-- assignments that are a one-dimensional array subscripted from 1 (slot s is assignments[s + 1])
-- of at least one owner, every owner a shard id the catalog knows (the first map published by
-- hand, with no map before it, needs shard ids only). The compare-and-set is unchanged: another
-- version than the next, or another slot count than the published maps', writes nothing and
-- returns no row.
create or replace function catalog.publish_slot_map_by_hand(p_version integer, p_assignments text[], p_reason text) returns setof catalog.slot_maps
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
  wrong text[] := '{}';
  owners text;
  nulls integer;
  first_map boolean := not exists (select 1 from catalog.slot_maps);
begin
  if coalesce(btrim(p_reason), '') = '' then
    wrong := wrong || 'the reason must not be empty (it is recorded with the map)'::text;
  end if;
  if p_version is null or p_version < 1 then
    wrong := wrong || format('the version must be 1 or more, not %s', coalesce(p_version::text, 'NULL'));
  end if;
  if p_assignments is null or cardinality(p_assignments) = 0 then
    wrong := wrong || 'the assignments must name an owner for every slot (none given)'::text;
  elsif array_ndims(p_assignments) <> 1 or array_lower(p_assignments, 1) <> 1 then
    wrong := wrong || format('the assignments must be a one-dimensional array subscripted from 1 (slot s is assignments[s + 1]), not one of bounds %s', array_dims(p_assignments));
  else
    select count(*) filter (where a is null) into nulls from unnest(p_assignments) a;
    if nulls > 0 then
      wrong := wrong || format('every slot needs an owner: %s of the %s assignments are NULL (the first is slot %s)', nulls, cardinality(p_assignments),
        (select min(i) - 1 from unnest(p_assignments) with ordinality u(a, i) where a is null));
    end if;
    select string_agg(format('slot %s: %s', s.slot, s.why), '; ' order by s.slot) into owners
      from (select min(u.i) - 1 as slot,
                   case when first_map and u.a ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' then null else catalog.shard_refusal(u.a) end as why
              from unnest(p_assignments) with ordinality u(a, i)
             where u.a is not null
             group by u.a) s
     where s.why is not null;
    if owners is not null then
      wrong := wrong || format('every owner must be a shard the catalog knows (the first slot of each owner refused): %s', owners);
    end if;
  end if;
  if cardinality(wrong) > 0 then
    raise exception 'catalog.publish_slot_map_by_hand(version, assignments, reason): %; nothing was published', array_to_string(wrong, '; ')
      using errcode = '22023';
  end if;
  perform set_config('ca_dms.map_writer', 'by hand: ' || p_reason, true);
  return query
    insert into catalog.slot_maps (version, slot_count, assignments, created_by, reason)
    select p_version, cardinality(p_assignments), p_assignments, session_user || ' by hand', btrim(p_reason)
     where p_version = coalesce((select max(m.version) from catalog.slot_maps m), 0) + 1
       and cardinality(p_assignments) = coalesce((select m.slot_count from catalog.slot_maps m order by m.version desc limit 1), cardinality(p_assignments))
    returning *;
  perform set_config('ca_dms.map_writer', '', true);
end
$$;
