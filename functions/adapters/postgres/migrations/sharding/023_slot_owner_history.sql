-- Each slot's owners over the slot maps, kept by the catalog (issue #15, the fence review's owner
-- history): the review (fence-review.ts, `ownersOfSlotsSince`; `shards fences`, GET
-- /shards/fences) asks, for each `fenced` slot row, which shards owned the slot in the maps since
-- the row's map version, and read every map since the oldest such row's version to answer: 500
-- rows at version 0 took 0.7 s to list at 1,000 4096-slot maps, 4.5 s at 5,000 and 42 s at 20,000
-- (bench/fence-review.ts, 2 shared cores loaded by other work), linear in the history, past the
-- API's 27 s. Now catalog.slot_owner_history holds, for each slot, the versions at which its
-- owner changed and the owner from there on: a row (slot, from_version, shard_id) for every map
-- `from_version` and every slot whose owner in it is distinct from its owner in the map before it
-- (the highest version below it), and for every slot of the first map (no map before it). A
-- slot's owner in map v is then the shard_id of its row with the highest from_version at or below
-- v, and its owners in the maps from version v on are that row's (taken at the first map at or
-- past v) and every later row's: an index probe and a range of a few rows a slot, whatever the
-- length of the history. A NULL owner (a map by a superuser's SQL with a hole; the
-- ownersOfSlotsSince query skips it) is recorded too: it ends the owner before it. Slots past a
-- map's length are NULL there, as `assignments[slot + 1]` and unnest's padding read them.
--
-- Written by the CAF08 trigger function (012, 013, 018, 020), as 020's catalog.slot_map_shards
-- is: it already zips each new map with the map before it to find the slots it changes, and now
-- also hands those (slot, new owner) pairs to catalog.slot_owner_history_record, in the map's own
-- transaction, after its refusals (a refused map records nothing), fired AFTER INSERT (a map that
-- `ON CONFLICT DO NOTHING` skipped, or a lost compare-and-set, records nothing either: 020 says
-- why). A flip inserts one row: no measurable time (bench/fence-review.ts --alternate 7: a
-- 4096-slot map insert flipping one slot at 20,000 maps, this function and 020's swapped in place
-- 7 times, 200 inserts each timed on the server, medians 1.12 ms and 1.15 ms on 2 cores loaded by
-- other work). The history is then read in 0.07 s at 1,000 maps, 0.06 s at 5,000 and 0.3 s at
-- 20,000 (the same bench). The only other read it adds is an index probe for a map
-- above the new one (none, for every map the stores publish: each is the latest); where there is
-- one (a superuser's insert into a gap of the versions), the rows of the new map and of the map
-- after it are computed again from the maps (catalog.slot_owner_history_rebuild), since the map
-- after it now follows the new one. Each row's key is its map's version: only the transaction
-- that inserted the map writes rows for it (a second insert of the version waits for the first
-- and fails on slot_maps' primary key, 23505, before its trigger runs), so no insert here waits
-- for another's or fails on this table's key, at any isolation level.
--
-- And, for a map changed by other means than an insert (a superuser's; the control login may
-- only read and insert maps): an UPDATE (of its assignments or its version) or a DELETE of a map
-- computes again the rows of the map's old and new versions and of the maps after each (their
-- map before them changed); a TRUNCATE of the maps empties the table. Each row trigger of a
-- statement touching several maps runs after the whole statement, on the maps as it left them, so
-- the rows computed are the final maps'. Unlike 020's known shards, the owners of a deleted map
-- are dropped: the review then reads as ownersOfSlotsSince read the maps (the same answers), and a
-- map deleted is no longer one whose owner may hold rows of the slot. Inserts made with the
-- triggers off (`session_replication_role = replica`, a superuser's) are not recorded, as they
-- are not checked: the review tells a slot whose history it lacks (no row at or below the version
-- asked for) and reads the maps for it as before (fence-review.ts).
--
-- Safe on a live catalog, as 020: a new table, `create or replace` of 020's trigger function
-- (same signature and attributes), new triggers for UPDATE, DELETE and TRUNCATE, under the same
-- SHARE ROW EXCLUSIVE lock of the maps (every insert's ROW EXCLUSIVE waits for it; the routers'
-- reads do not), which waits for the map inserts in flight (their trigger ran 020's function,
-- which records no owner) and holds off new ones until this migration commits, a moment: every
-- map is then either committed before this migration (migration 024 reads it into the table) or
-- recorded by its own trigger. Until 024 commits, the review finds no row at or below the
-- versions it asks for and reads the maps (above).
create table if not exists catalog.slot_owner_history (
  slot integer not null,
  from_version integer not null,
  shard_id text,
  primary key (slot, from_version)
);
-- A map's rows, deleted when they are computed again (below): without it, each map of a DELETE of
-- many maps (a test's, a superuser's clean-up) read the whole table.
create index if not exists slot_owner_history_from_version_idx on catalog.slot_owner_history (from_version);
revoke all on catalog.slot_owner_history from public;
-- The review's login (the API's control login, 005) reads it as it reads the maps.
grant select on catalog.slot_owner_history to ca_dms_control;

lock table catalog.slot_maps in share row exclusive mode;

-- The rows of map `p_version` and of the map after it, computed again from the maps as they are
-- (the first map's every slot; a later map's slots whose owner is distinct from the map before
-- it), after deleting theirs. For an insert with a map above it, an UPDATE and a DELETE (above);
-- no login may call it.
create or replace function catalog.slot_owner_history_rebuild(p_version integer) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  next_version integer := (select min(m.version) from catalog.slot_maps m where m.version > p_version);
begin
  delete from catalog.slot_owner_history h where h.from_version = p_version or h.from_version = next_version;
  insert into catalog.slot_owner_history (slot, from_version, shard_id)
  select (u.i - 1)::integer, m.version, u.owner
    from catalog.slot_maps m
    left join lateral (select p.assignments from catalog.slot_maps p where p.version < m.version order by p.version desc limit 1) p on true
    cross join lateral unnest(m.assignments, p.assignments) with ordinality as u(owner, before, i)
   where m.version in (p_version, next_version)
     and (p.assignments is null or u.owner is distinct from u.before);
end
$$;
revoke all on function catalog.slot_owner_history_rebuild(integer) from public;

-- Records an inserted map's rows: `p_assignments` every slot of a first map, else `p_slots` and
-- `p_owners` the slots it changes and their new owners (the CAF08 trigger's zip); where a map
-- above it exists, both its rows and that map's are computed again instead (above). Called by the
-- CAF08 trigger function; no login may call it.
create or replace function catalog.slot_owner_history_record(p_version integer, p_assignments text[], p_slots integer[], p_owners text[]) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  -- max(), not `exists (... where version > p_version)`: PL/pgSQL may keep a generic plan of the
  -- latter, which on a catalog analyzed with many maps scanned the whole table for a map above
  -- the latest (none): with it, a flip's insert at 20,000 maps took a median of 24 ms timed by the
  -- client on a loaded host, 8 ms with max() and 020's function alike (bench/fence-review.ts).
  -- max() is always the primary key's last entry.
  if (select max(m.version) from catalog.slot_maps m) > p_version then
    perform catalog.slot_owner_history_rebuild(p_version);
  elsif p_assignments is not null then
    insert into catalog.slot_owner_history (slot, from_version, shard_id)
    select (u.i - 1)::integer, p_version, u.owner from unnest(p_assignments) with ordinality as u(owner, i);
  elsif p_slots is not null then
    insert into catalog.slot_owner_history (slot, from_version, shard_id)
    select u.slot, p_version, u.owner from unnest(p_slots, p_owners) as u(slot, owner);
  end if;
end
$$;
revoke all on function catalog.slot_owner_history_record(integer, text[], integer[], text[]) from public;

-- Migration 020's trigger function, its refusals and its known shards unchanged, also recording
-- the changed slots' new owners (above): 020's query over the changed slots answers them too,
-- as two arrays in slot order (NULL when the map changes no slot).
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
    perform catalog.slot_map_shards_add(new.assignments, true);
    perform catalog.slot_owner_history_record(new.version, new.assignments, null, null);
    return new; -- the first map
  end if;
  if writer ~ '^move job #[0-9]{1,18}$' then
    job := substring(writer from '[0-9]+')::bigint;
  end if;
  if by_hand then
    overrides := string_to_array(replace(coalesce(current_setting('ca_dms.override_moves', true), ''), ' ', ''), ',');
  end if;
  with c as materialized (
    select (u.i - 1)::integer as slot, u.old_owner, u.new_owner
      from unnest(new.assignments, previous) with ordinality as u(new_owner, old_owner, i)
     where u.new_owner is distinct from u.old_owner)
  select r.slot, r.old_owner, r.new_owner, r.moving, r.moving_what, r.jobs, r.unfinished,
         (select array_agg(c.new_owner) from c
           where c.new_owner is not null and not exists (select 1 from catalog.slot_map_shards k where k.shard_id = c.new_owner)) as absent,
         (select array_agg(c.slot order by c.slot) from c) as changed_slots,
         (select array_agg(c.new_owner order by c.slot) from c) as changed_owners
    into refused
    from (select 1) one
    left join lateral (
      select c.slot, c.old_owner, c.new_owner, a.id as moving, a.what as moving_what, h.jobs,
             a.id is not null and not coalesce(by_hand and a.id::text = any (overrides), false) as unfinished
        from c
        left join lateral (
          select j.id, j.to_shard, format('#%s (%s to %s, %s)', j.id, j.from_shard, j.to_shard, j.state) as what
            from catalog.move_jobs j
           where j.slot = c.slot and j.state not in ('done', 'failed', 'cancelled')
             and j.kind = 'slot' and j.flip_started_at is null) a on true
        left join lateral (
          select string_agg(format('#%s (%s to %s, %s)', j.id, j.from_shard, j.to_shard, j.state), ', ' order by j.id) as jobs
            from catalog.move_jobs j
           where not by_hand and j.kind = 'slot' and j.slot = c.slot
             and (j.state = 'done' or j.flip_started_at is not null or (j.state in ('failed', 'cancelled') and j.copying_at is not null))) h on true
       where not coalesce(a.id = job and a.to_shard = c.new_owner, false)
         and ((a.id is not null and not coalesce(by_hand and a.id::text = any (overrides), false))
              or h.jobs is not null)
       order by c.slot
       limit 1) r on true;
  if refused.slot is null then
    if refused.absent is not null then
      perform catalog.slot_map_shards_add(refused.absent);
    end if;
    perform catalog.slot_owner_history_record(new.version, null, refused.changed_slots, refused.changed_owners);
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
-- Fired AFTER INSERT, as 020's: the same trigger, replaced in place (the function's body is what changed).
create or replace trigger slot_maps_owner_kept after insert on catalog.slot_maps
  for each row execute function catalog.slot_maps_owner_kept();

-- A map updated or deleted (a superuser's): its versions' rows and the next maps' computed again;
-- the maps truncated: no row left (above).
create or replace function catalog.slot_owner_history_changed() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op = 'TRUNCATE' then
    delete from catalog.slot_owner_history;
    return null;
  end if;
  perform catalog.slot_owner_history_rebuild(old.version);
  if tg_op = 'UPDATE' and new.version is distinct from old.version then
    perform catalog.slot_owner_history_rebuild(new.version);
  end if;
  return null;
end
$$;
revoke all on function catalog.slot_owner_history_changed() from public;

drop trigger if exists slot_owner_history_changed on catalog.slot_maps;
create trigger slot_owner_history_changed after update of version, assignments or delete on catalog.slot_maps
  for each row execute function catalog.slot_owner_history_changed();
drop trigger if exists slot_owner_history_truncated on catalog.slot_maps;
create trigger slot_owner_history_truncated after truncate on catalog.slot_maps
  for each statement execute function catalog.slot_owner_history_changed();
