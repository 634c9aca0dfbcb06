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
--
-- And (at the end of this file) migration 012's trigger refuses a map that changes the owner of a
-- slot whose slot move is unfinished and has not flipped, by hand too unless the move is named in
-- `ca_dms.override_moves` (CAF08, slot-map-moving-slot.test.ts).

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

-- A slot's owner while a slot move of it is unfinished (issue #15, slot-map-moving-slot.test.ts).
-- Migration 012 left a slot whose move had not flipped to the move ("the move's to judge"): a map
-- published meanwhile (SlotMapStore.publish, an INSERT, or publish_slot_map_by_hand) was let
-- through. Given to the move's target B before the move fenced B (`planned`, or `copying` before
-- its source was prepared), writers sent the slot's writes to B, which had no fence row for it and
-- took them, acknowledged; the move then fenced B `incoming`, its copy deleted B's rows of the slot
-- before copying A's, and the move ended `done`: the writes B took were on no shard. Given to a
-- third shard C, C took the slot's writes and the move failed at its flip, the slot's rows split
-- between A and C; given to B under the move's fence, the move took it as its publication.
--
-- So a map that changes, against the map before it, the owner of a slot with an unfinished slot
-- move whose flip has not begun (state not done, failed or cancelled, `flip_started_at` null; one
-- at most per slot, move_jobs_one_active_per_slot) is refused, CAF08, nothing published, the
-- message naming the move job and saying to cancel it or let it finish first, unless:
--   * `ca_dms.map_writer` is that move's own flip, `move job #<id>`, to its target (as 012);
--   * the map is published by hand (publish_slot_map_by_hand) in a transaction that names the move
--     in the setting `ca_dms.override_moves` (job ids separated by commas, `set local` before the
--     call). By hand alone is refused: the by-hand recovery is for a slot whose owner the movers
--     cannot decide, and while the move is unfinished they still can: a cancel rolls the move back
--     (the slot stays on its source, the copy deleted), a run finishes it, and only then does a
--     map by hand decide without the move overwriting it at its flip or deleting what its new
--     owner took. The override is for the move that can do neither, its error saying the slot's
--     owner "must be decided by hand": a flip the catalog lost whose target's fence is no longer
--     open, or whose catalog names a third shard (move-port.ts recoverLostFlip, which every run
--     meets before a cancel is acted on, so that job never ends): without it only a superuser
--     past the trigger could recover such a slot. The operator names the move: an accidental
--     override of a move that would finish or cancel is what this guard is for.
-- Slot moves only: a directory move's key is placed by its pin, whatever the map says of its slot.
-- A move planned concurrently with such a map: Mover.plan reads the slot's owner again once its
-- job row is in, under catalog.lock_slot_maps_for_hash_route() (008), so a map inserted but not
-- committed is waited for and seen (the plan is then refused), and a map inserted after the lock
-- waits for the plan's commit, its trigger then seeing the job (each statement of the trigger
-- reads with a snapshot taken after the insert's lock was granted).
--
-- 012's checks are kept, and the by-hand path is otherwise unchanged (it skips them). The jobs of
-- each changed slot are read in one pass over move_jobs_slot_history_idx (both rules), the maps
-- still zipped (bench/slot-map-owner-kept.ts: a flip changes one slot).
create or replace function catalog.slot_maps_owner_kept() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  writer text := coalesce(current_setting('ca_dms.map_writer', true), '');
  by_hand boolean := writer like 'by hand: %';
  overrides text[];
  job bigint;
  previous text[];
  refused record;
begin
  select m.assignments into previous from catalog.slot_maps m where m.version < new.version order by m.version desc limit 1;
  if previous is null then
    return new; -- the first map
  end if;
  if writer ~ '^move job #[0-9]{1,18}$' then
    job := substring(writer from '[0-9]+')::bigint;
  end if;
  if by_hand then
    overrides := string_to_array(replace(coalesce(current_setting('ca_dms.override_moves', true), ''), ' ', ''), ',');
  end if;
  select c.slot, c.old_owner, c.new_owner, h.moving, h.moving_what, h.jobs,
         h.moving is not null and not coalesce(by_hand and h.moving::text = any (overrides), false) as unfinished into refused
    from (select (u.i - 1)::integer as slot, u.old_owner, u.new_owner
            from unnest(new.assignments, previous) with ordinality as u(new_owner, old_owner, i)
           where u.new_owner is distinct from u.old_owner) c
    cross join lateral (
      select max(j.id) filter (where j.state not in ('done', 'failed', 'cancelled') and j.flip_started_at is null) as moving,
             max(j.to_shard) filter (where j.state not in ('done', 'failed', 'cancelled') and j.flip_started_at is null) as moving_to,
             max(format('#%s (%s to %s, %s)', j.id, j.from_shard, j.to_shard, j.state)) filter (where j.state not in ('done', 'failed', 'cancelled') and j.flip_started_at is null) as moving_what,
             string_agg(format('#%s (%s to %s, %s)', j.id, j.from_shard, j.to_shard, j.state), ', ' order by j.id)
               filter (where j.state = 'done' or j.flip_started_at is not null or (j.state in ('failed', 'cancelled') and j.copying_at is not null)) as jobs
        from catalog.move_jobs j
       where j.kind = 'slot' and j.slot = c.slot) h
   where not coalesce(h.moving = job and h.moving_to = c.new_owner, false)
     and ((h.moving is not null and not coalesce(by_hand and h.moving::text = any (overrides), false))
          or (h.jobs is not null and not by_hand))
   order by c.slot
   limit 1;
  if not found then
    return new;
  end if;
  if refused.unfinished then
    raise exception 'slot map version % may not change the owner of slot % from % to %: move job % has not finished, and a map published before its flip sends the slot''s writes where the move does not expect them (its copy deletes what its target took meanwhile; a third shard''s are left out of its rows). Nothing was published. Cancel the move (DELETE /shards/moves/%) or let it finish first, then publish the map%',
      new.version, refused.slot, refused.old_owner, refused.new_owner, refused.moving_what, refused.moving,
      case
        when by_hand then format('; a move that can neither finish nor be cancelled (its error says the slot''s owner must be decided by hand) is overridden by naming it in the same transaction first: set local ca_dms.override_moves = ''%s''', refused.moving)
        when writer = '' then ''
        else format(' (ca_dms.map_writer "%s" is not the flip of move job #%s to its target)', writer, refused.moving)
      end
      using errcode = 'CAF08', detail = format('slot %s; from %s to %s; unfinished move job %s', refused.slot, refused.old_owner, refused.new_owner, refused.moving_what),
            hint = 'cancel the move (DELETE /shards/moves/{id}) or let it finish, then publish';
  end if;
  raise exception 'slot map version % may not change the owner of slot % from % to % by hand: move job(s) % wrote fence rows for it on their shards, which decide for the slot whatever the map says (a shard that is not its owner refuses it, CAF02, or takes its writes while its rows are elsewhere). Nothing was published. To give the slot another owner, move it (a slot move, POST /shards/moves); where its owner must be decided by hand, call catalog.publish_slot_map_by_hand(version, assignments, reason)%',
    new.version, refused.slot, refused.old_owner, refused.new_owner, refused.jobs,
    case when writer = '' then '' else format(' (ca_dms.map_writer "%s" names no unfinished move of slot %s to %s)', writer, refused.slot, refused.new_owner) end
    using errcode = 'CAF08', detail = format('slot %s; from %s to %s; move jobs %s', refused.slot, refused.old_owner, refused.new_owner, refused.jobs),
          hint = 'change owners through moves; a recovery by hand: select * from catalog.publish_slot_map_by_hand(version, assignments, reason)';
end
$$;
