-- The cost of a slot map published by hand (issue #15, bench/slot-map-by-hand.ts). A recovery by
-- hand runs under the control login's 10 s statement_timeout (catalog migration 005), and on a
-- catalog that had run many moves it could not be published at all:
--   * 013's catalog.publish_slot_map_by_hand checked "a shard the catalog knows" once per slot, not
--     once per owner: its query grouped the owners (`group by u.a`) and kept the refused ones
--     (`where s.why is not null` over the grouped subquery), and PostgreSQL moves a condition on
--     grouped columns alone below the grouping (the plan: `Function Scan on unnest u, Filter: ((a
--     IS NOT NULL) AND (... catalog.shard_refusal(a) ... IS NOT NULL)), Rows Removed by Filter:
--     4096`). catalog.shard_refusal has a SET clause (search_path), so it is never inlined: each of
--     the 4,096 calls ran catalog.shard_known's statements, and for a shard no move job names (one
--     that never moved) a sequential scan of catalog.move_jobs (no index on from_shard, to_shard).
--     On 2 shared cores, a 4,096-slot map over 3 shards: about 0.4 to 1 s with no move jobs, 20 to
--     45 s with 100,000 finished ones.
--   * catalog.shard_known looked for the shard in the directory, then in every move job, then in
--     every slot map: an owner of the latest map that never moved was found only after a scan of
--     every job (about 13 ms at 100,000 jobs), once per such owner even when checked once.
-- Now each distinct owner is checked once, in the order of its first slot (a loop: no plan can
-- run the check per slot), with the same refusal text; and catalog.shard_known looks in the latest
-- map second, where nearly every owner of a map by hand is (the same answer: the latest map is one
-- of "a slot map, any version"). 3.5 to 5 ms with 0, 1,000 or 100,000 jobs (about 30 ms with 64
-- owners, where it was 920 ms with the check once per owner and 013's shard_known).
--
-- No index for it. The move jobs are now read only for an owner that neither the directory nor
-- the latest map names (a shard new to the map, or a typo): one scan, about 15 ms at 100,000 jobs,
-- once per such owner in a recovery by hand or a repin_by_hand, both rare. Indexes on move_jobs
-- (from_shard) and (to_shard), measured, did not help even the 64-owner map (shard_known's
-- statement is planned generically, and with two shards in the bench's jobs its plan scans
-- anyway), and would be written by every plan of a move and every change of a job's state (not a
-- HOT update: move_jobs_state_idx), on the movers' path, for good. A GIN index on slot_maps
-- (assignments), which would answer "any slot map names it" without reading every map (about 8 to
-- 10 s for a typo, an owner no map, job or entry names, at 100,000 maps; as before 018, but once
-- per typo instead of once per slot of it), took 27 s to build at 100,000 maps under a lock that
-- holds off every map insert (each slot move's flip, under its write fence), and added about 1 ms
-- to each map insert: left out (docs/sharding-spec.md section 9).
--
-- And the CAF08 trigger (012, 013): for each slot the map changed it read every slot move job of
-- the slot (move_jobs_slot_history_idx) and formatted each into 012's refusal text, by hand too,
-- where 012's rule does not apply: a map by hand changing one shard's slots (1,366 of 4,096) spent
-- about 50 to 170 ms in the trigger at 100,000 finished jobs, linear in the jobs of the slots it
-- changes. Now the slot's unfinished move is read through the partial unique index
-- move_jobs_one_active_per_slot (one row at most per slot, whatever its history), and the jobs of
-- 012's rule only where that rule applies (not by hand): the by-hand path costs the same with 0 or
-- 100,000 jobs (about 1.6 ms; 1 buffer read where 013 read 36,882). Every refusal is as before: same conditions, the same slot (the
-- first in slot order), SQLSTATE, message, DETAIL and HINT (by-hand-cost.test.ts pins each branch,
-- and by-hand-arguments.test.ts, slot-map-by-hand.test.ts, slot-map-moving-slot.test.ts).
--
-- Safe on a live catalog and idempotent: `create or replace function` of three of the migrations
-- login's own functions, same signatures and attributes (their grants kept), no lock on a table,
-- nothing that needs a superuser.

-- Migration 013's function, looking in the latest slot map second (above). Same answer.
create or replace function catalog.shard_known(p_shard text) returns boolean
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
  select exists (select 1 from catalog.shard_directory d where d.shard_id = p_shard)
      or exists (select 1 from (select m.assignments from catalog.slot_maps m order by m.version desc limit 1) latest where p_shard = any (latest.assignments))
      or exists (select 1 from catalog.move_jobs j where j.from_shard = p_shard or j.to_shard = p_shard)
      or exists (select 1 from catalog.slot_maps m where p_shard = any (m.assignments))
$$;

-- Migration 013's function, the owners checked once each (above). Everything else as in 013.
create or replace function catalog.publish_slot_map_by_hand(p_version integer, p_assignments text[], p_reason text) returns setof catalog.slot_maps
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
  wrong text[] := '{}';
  refused text[] := '{}';
  named record;
  why text;
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
    -- Each distinct owner once, at its first slot, in slot order (as 013's string_agg ordered).
    for named in
      select u.a as shard, min(u.i) - 1 as slot
        from unnest(p_assignments) with ordinality u(a, i)
       where u.a is not null
       group by u.a
       order by 2
    loop
      why := case when first_map and named.shard ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' then null else catalog.shard_refusal(named.shard) end;
      if why is not null then
        refused := refused || format('slot %s: %s', named.slot, why);
      end if;
    end loop;
    if cardinality(refused) > 0 then
      wrong := wrong || format('every owner must be a shard the catalog knows (the first slot of each owner refused): %s', array_to_string(refused, '; '));
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

-- Migration 013's trigger function, its per-slot reads split (above): `a`, the slot's unfinished
-- slot move not past its flip (at most one: move_jobs_one_active_per_slot, whose predicate the
-- condition repeats so that its index is the one read), and `h`, the jobs of 012's rule, read only
-- when not by hand (by hand, 013 computed them and never used them). The conditions, the slot
-- chosen and the two refusals are 013's.
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
  select c.slot, c.old_owner, c.new_owner, a.id as moving, a.what as moving_what, h.jobs,
         a.id is not null and not coalesce(by_hand and a.id::text = any (overrides), false) as unfinished into refused
    from (select (u.i - 1)::integer as slot, u.old_owner, u.new_owner
            from unnest(new.assignments, previous) with ordinality as u(new_owner, old_owner, i)
           where u.new_owner is distinct from u.old_owner) c
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
