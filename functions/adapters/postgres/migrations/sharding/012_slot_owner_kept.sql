-- A slot a finished slot move wrote lasting fence rows for keeps its owner unless a move or a
-- deliberate recovery changes it (docs/sharding-spec.md section 9, "A moved slot keeps its owner
-- (CAF08)"). A slot move leaves rows in the shards' write_fences for good: a move that ended
-- `done` leaves its source's `slot` row `moved` (to the target), one rolled back after its copy
-- began leaves its target's row `moved` (to the source). They decide for the slot on those shards
-- whatever the map says. A map published by hand (SlotMapStore.publish, or an INSERT) that changed
-- such a slot's owner went through, and (issue #15, slot-map-by-hand.test.ts, a slot moved A -> B):
--   * given back to A: every read and write met A's `moved` row (CAF02), was re-routed by the map
--     to A again and gave up ("routing is not converging", the documents API's 503); the slot's
--     next move (A -> B, where its rows are) stopped in `copying` for good ("the fence on A says
--     slot ... is moved"), holding the slot's moves up (one unfinished move per slot);
--   * given to a third shard C: reads answered an empty 200 from C (its documents on B out of
--     sight), C took its new users (the slot split over two shards), and the slot's next move, to
--     B where its rows were, deleted B's rows of the slot before copying C's: its documents were
--     gone from every shard.
--
-- So a new map that changes the owner of such a slot (one catalog.slot_owner_moves, below, names
-- jobs for) against the map before it is refused, SQLSTATE CAF08, nothing published, unless the
-- transaction says who writes it in the setting `ca_dms.map_writer`:
--   * `move job #<id>`: a mover's flip (move-port.ts publishOwner sets it, `set_config(..., true)`,
--     in the transaction that publishes). Let through, for each slot it changes, only if that job
--     is an unfinished slot move of that slot, not past its flip, whose target is the new owner.
--   * `by hand: <reason>`: a deliberate recovery, set by catalog.publish_slot_map_by_hand (below).
-- Only jobs finished or past their flip count: while a slot's move has not flipped, a map
-- published by hand that names its source, its target or a third shard is judged by the move
-- itself (section 9, "Changing the owner of a unit while it moves"). A guard against accidents, not against a
-- superuser or anyone who sets the setting himself: the movers' defences stay for that case.
-- Maps are append-only for the control plane (SELECT, INSERT): an UPDATE of a published map by
-- a superuser is not checked.
create index move_jobs_slot_history_idx on catalog.move_jobs (slot) where kind = 'slot';

-- The slot moves of `p_slot` that left, or will leave, lasting fence rows: `done` (the source's
-- row `moved`), past their flip (`flip_started_at`, set in the flip's own transaction after the
-- map it publishes: the move judges the owner only up to its flip and never reads the map again,
-- so a map published by hand between its flip and its end went through and the move still ended
-- `done`; review of this migration, slot-map-by-hand.test.ts "from the flip of a slot's move on"),
-- or `failed`/`cancelled` once their copy began (`copying_at`, never cleared: the target's row
-- turned `moved` by the rollback). Null when there is none.
--
-- The trigger compares the two maps in one pass (`unnest(new, previous)`, zipped). A join of two
-- `unnest ... with ordinality` on the slot number (the first version) took 36 ms per map with no
-- move jobs and about 1,000 ms with 50,000 (2 shared cores, bench/slot-map-owner-kept.ts), added
-- to every slot move's flip under its fence; zipped, about 2 ms. A map of another slot count
-- counts the slots only one map has (their owner NULL on the other side) as changed. A job past
-- its flip no longer lets a map through as its writer (it publishes nothing more; a lost flip
-- published again has no `flip_started_at` in the catalog that lost it).
create function catalog.slot_owner_moves(p_slot integer) returns text
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
  select string_agg(format('#%s (%s to %s, %s)', j.id, j.from_shard, j.to_shard, j.state), ', ' order by j.id)
    from catalog.move_jobs j
   where j.kind = 'slot' and j.slot = p_slot
     and (j.state = 'done' or j.flip_started_at is not null or (j.state in ('failed', 'cancelled') and j.copying_at is not null))
$$;

revoke all on function catalog.slot_owner_moves(integer) from public;

create function catalog.slot_maps_owner_kept() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  writer text := coalesce(current_setting('ca_dms.map_writer', true), '');
  job bigint;
  previous text[];
  refused record;
begin
  if writer like 'by hand: %' then
    return new;
  end if;
  select m.assignments into previous from catalog.slot_maps m where m.version < new.version order by m.version desc limit 1;
  if previous is null then
    return new; -- the first map
  end if;
  if writer ~ '^move job #[0-9]{1,18}$' then
    job := substring(writer from '[0-9]+')::bigint;
  end if;
  select c.slot, c.old_owner, c.new_owner, catalog.slot_owner_moves(c.slot) as jobs into refused
    from (select (u.i - 1)::integer as slot, u.old_owner, u.new_owner
            from unnest(new.assignments, previous) with ordinality as u(new_owner, old_owner, i)
           where u.new_owner is distinct from u.old_owner) c
   where catalog.slot_owner_moves(c.slot) is not null
     and not exists (select 1 from catalog.move_jobs j
                      where j.id = job and j.kind = 'slot' and j.slot = c.slot and j.to_shard = c.new_owner
                        and j.state not in ('done', 'failed', 'cancelled') and j.flip_started_at is null)
   order by c.slot
   limit 1;
  if not found then
    return new;
  end if;
  raise exception 'slot map version % may not change the owner of slot % from % to % by hand: move job(s) % wrote fence rows for it on their shards, which decide for the slot whatever the map says (a shard that is not its owner refuses it, CAF02, or takes its writes while its rows are elsewhere). Nothing was published. To give the slot another owner, move it (a slot move, POST /shards/moves); where its owner must be decided by hand, call catalog.publish_slot_map_by_hand(version, assignments, reason)%',
    new.version, refused.slot, refused.old_owner, refused.new_owner, refused.jobs,
    case when writer = '' then '' else format(' (ca_dms.map_writer "%s" names no unfinished move of slot %s to %s)', writer, refused.slot, refused.new_owner) end
    using errcode = 'CAF08', detail = format('slot %s; from %s to %s; move jobs %s', refused.slot, refused.old_owner, refused.new_owner, refused.jobs),
          hint = 'change owners through moves; a recovery by hand: select * from catalog.publish_slot_map_by_hand(version, assignments, reason)';
end
$$;

revoke all on function catalog.slot_maps_owner_kept() from public;

create trigger slot_maps_owner_kept before insert on catalog.slot_maps
  for each row execute function catalog.slot_maps_owner_kept();

-- A deliberate decision of slots' owners by hand: publishes `p_assignments` as version
-- `p_version`, only if that is the next version and the slot count is the published maps' (the
-- compare-and-set of SlotMapStore.publish; otherwise nothing is written and no row returned),
-- recording `<login> by hand` in `created_by` and the reason. The catalog cannot see the shards:
-- the operator checks first that each slot's new owner holds its rows and that its
-- `write_fences` row of the slot (`kind = 'slot'`), if any, is `open` (section 9).
create function catalog.publish_slot_map_by_hand(p_version integer, p_assignments text[], p_reason text) returns setof catalog.slot_maps
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  if coalesce(btrim(p_reason), '') = '' then
    raise exception 'catalog.publish_slot_map_by_hand(version, assignments, reason): the reason must not be empty (it is recorded with the map)'
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

revoke all on function catalog.publish_slot_map_by_hand(integer, text[], text) from public;
grant execute on function catalog.publish_slot_map_by_hand(integer, text[], text) to ca_dms_control;
