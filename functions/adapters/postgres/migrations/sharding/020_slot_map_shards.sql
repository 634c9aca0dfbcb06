-- The shards any slot map names, kept by the catalog (issue #15, review of migration 018): a map by
-- hand or a pin by hand naming an owner that neither the directory nor a move job names (a typo,
-- 'shard_0O2' for 'shard_002') was looked for in every slot map ever published (018's
-- catalog.shard_known, "a slot map, any version"): one per slot move's flip, no index answering it
-- (018 says why the GIN index was left out), about 8 to 17 s on 2 shared cores at 100,000 4096-slot
-- maps, so the typo met the control login's 10 s statement_timeout (catalog migration 005) instead
-- of the refusal that names it. Now catalog.slot_map_shards holds every shard a slot map names, one
-- row each, written by the catalog itself in the transaction that writes the map, and
-- catalog.shard_known (migration 021, once the maps published before this migration are in it)
-- looks a shard up there.
--
-- Written by the CAF08 trigger function (012, 013, 018): it already zips each new map with the map
-- before it (the highest version below it) to find the slots it changes; the owners of those slots
-- that the table does not hold are added, and only those: every other owner of the new map owns a
-- slot of the map before it, and so is in the table already (by induction over the maps, from 021's
-- fill of the history). A flip (one slot changed, its target in the table since its first flip)
-- adds one index probe of a table of a few rows: no measurable time (a flip's insert of a 4096-slot
-- map, 200 in a row, 2.5 to 3.2 ms with this trigger, 2.9 to 4.5 ms with 018's, 0.4 to 0.7 ms with
-- none, on 2 cores loaded by other work). A trigger of its own would read the maps again: zipping
-- them costs about 2 ms there, checking every owner of the new map against the table
-- (`assignments <@ array(...)`) 0.3 to 0.6 ms with 3 shards and about 5 ms with 64, growing with
-- the shards. A first map (no map before it) adds all its owners, each inserted whether or not the
-- transaction's snapshot shows it in the table: a REPEATABLE READ snapshot taken before a TRUNCATE
-- of the maps sees them gone (TRUNCATE is not MVCC-safe) but the table's rows, deleted by the same
-- TRUNCATE's trigger, still there, and the owners of its first map went unrecorded (the insert
-- finds the deleted row dead, and a shard there still live and committed is a unique_violation,
-- caught: below).
--
-- The trigger fires AFTER INSERT (012 to 019 fired it BEFORE): its rows are written only for a map
-- that is in the table. Fired before, it ran for a row that an `INSERT ... ON CONFLICT DO NOTHING`
-- then skipped, the statement a success and the rows kept: SlotMapStore.initialise, two processes
-- starting on a catalog with no map and configured with different shards (one that a deploy
-- adds), left the loser's new shard known though no map names it. And it ran before the row's
-- primary key was checked: two publications of one version (a lost compare-and-set) naming the
-- same new shard met in this table first, where, at SERIALIZABLE, the second's unique_violation on
-- a shard it had looked for is a serialization failure (PostgreSQL reports the SSI conflict
-- first): 40001 where 018 answered 23505 (SlotMapVersionConflictError). Fired after, the second
-- waits for the first's version and fails on it (23505) before reaching this table. Its refusals
-- are the same, with the same text; a map both refused and a lost compare-and-set (another
-- publication of its version committed meanwhile) is now refused as the latter (23505: read the
-- map again, then publish), and a map refused and also failing a CHECK constraint of slot_maps (a
-- superuser's SQL; the stores and catalog.publish_slot_map_by_hand check those first) names the
-- constraint. About the same cost (the row read back, its assignments detoasted): an insert of a
-- 4096-slot map changing one slot, no move jobs, the median of 200 in one transaction, the two
-- alternated 7 times on 2 cores at load 3 to 7: 1.06 to 1.24 ms fired after (1.5 and 1.9 ms at the
-- highest load), 1.01 to 1.30 ms fired before, 0.29 ms with the trigger off.
--
-- The rows are the transaction's own: a map rolled back (refused, a lost compare-and-set, a
-- rollback) takes them back with it, so no shard is ever known for a map nobody published (the
-- answer 018 gave). Two transactions naming the same new shard: the second insert waits for the
-- first's (a unique index), then, if the first committed, does nothing (its unique_violation
-- caught, not ON CONFLICT DO NOTHING: at REPEATABLE READ that raises a serialization failure
-- instead, and the second map would fail with 40001 where it is published; at SERIALIZABLE the
-- unique_violation is itself a serialization failure, as any insert of a key read absent meanwhile
-- is), and, if the first rolled back, inserts the shard itself. Each map's new shards are inserted
-- in one order (code points): two maps naming the same two new shards wait for each other one way,
-- never both ways (no deadlock).
--
-- And, for a map changed by other means than an insert: an UPDATE of a map (a superuser's; the
-- control login may only read and insert maps) adds its new owners, a TRUNCATE of the maps empties
-- the table. A DELETE of a map (a superuser's too; the maps are the catalog's history) leaves its
-- owners known: not looked for again in every map, where 018 would have answered "unknown" for a
-- shard that only deleted maps named (docs/sharding-spec.md section 9). Inserts made with the
-- triggers off (`session_replication_role = replica`, a superuser's) are not recorded, as they are
-- not checked.
--
-- Safe on a live catalog: a new table, `create or replace` of 018's trigger function (same
-- signature and attributes), and of 012's trigger (`create or replace trigger`, PostgreSQL 14: a
-- DROP TRIGGER would take ACCESS EXCLUSIVE, holding off every read of the maps). The lock below
-- (SHARE ROW EXCLUSIVE, which every insert's ROW EXCLUSIVE conflicts with; the routers' reads do
-- not wait for it, and the triggers are created under it) waits for the map inserts in flight
-- (their trigger ran 018's function, which records nothing) to end, and holds off new ones until
-- this migration commits, a moment: every map is then either committed before this migration (021
-- reads it) or recorded by its own trigger. The runner's lock_timeout bounds the wait (a flip in
-- flight ends in milliseconds; a map by hand holds its insert while it counts rows on the shards,
-- seconds: a flip queued behind this lock meanwhile ends at its fence budget as over budget, its
-- fence given back, and flips at its next fence attempt).
create table if not exists catalog.slot_map_shards (
  shard_id text primary key
);
revoke all on catalog.slot_map_shards from public;

lock table catalog.slot_maps in share row exclusive mode;

-- Adds each of `p_shards` (NULLs and duplicates ignored) that the table does not hold, one at a
-- time in code-point order, a concurrent insert of the same shard waited for and then left as it
-- is (above). Those the transaction's snapshot shows in the table are not tried, unless `p_every`
-- (a first map: above). Called by the triggers below and by migration 021; no login may call it.
create or replace function catalog.slot_map_shards_add(p_shards text[], p_every boolean default false) returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  shard text;
begin
  for shard in
    select distinct s collate "C" from unnest(p_shards) s
     where s is not null and (p_every or not exists (select 1 from catalog.slot_map_shards k where k.shard_id = s))
     order by 1
  loop
    begin
      insert into catalog.slot_map_shards (shard_id) values (shard);
    exception when unique_violation then
      null; -- another transaction's, committed
    end;
  end loop;
end
$$;
revoke all on function catalog.slot_map_shards_add(text[], boolean) from public;

-- Migration 018's trigger function, its refusals unchanged, recording the changed slots' owners
-- the table does not hold (above). 018's one query over the changed slots is now a CTE read twice:
-- by 018's query (the first refused slot), and for the owners to add; the query always answers one
-- row, its refused slot NULL when none is refused.
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
           where c.new_owner is not null and not exists (select 1 from catalog.slot_map_shards k where k.shard_id = c.new_owner)) as absent
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

-- Fired AFTER INSERT (above): the same trigger as 012's, replaced in place.
create or replace trigger slot_maps_owner_kept after insert on catalog.slot_maps
  for each row execute function catalog.slot_maps_owner_kept();

-- A map's owners changed by an UPDATE (a superuser's) are added; a TRUNCATE of the maps leaves
-- none (above).
create or replace function catalog.slot_map_shards_changed() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op = 'TRUNCATE' then
    delete from catalog.slot_map_shards;
    return null;
  end if;
  perform catalog.slot_map_shards_add(new.assignments);
  return null;
end
$$;
revoke all on function catalog.slot_map_shards_changed() from public;

drop trigger if exists slot_map_shards_updated on catalog.slot_maps;
create trigger slot_map_shards_updated after update of assignments on catalog.slot_maps
  for each row execute function catalog.slot_map_shards_changed();
drop trigger if exists slot_map_shards_truncated on catalog.slot_maps;
create trigger slot_map_shards_truncated after truncate on catalog.slot_maps
  for each statement execute function catalog.slot_map_shards_changed();
