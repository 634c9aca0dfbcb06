-- A key a directory move has written fence rows for stays pinned (docs/sharding-spec.md section 9,
-- "A key moved by a directory move stays pinned"). A directory move writes `directory` rows in
-- the shards' write_fences for its key (the source's before its copy, the target's `incoming`),
-- and nothing ever removes them; on both shards they decide for the key over its slot's rows. A
-- pin deleted by hand sent the key by hash, and the next move of its slot took the key along
-- (`excluded_keys` lists only the keys the directory places): the target's `moved` row then
-- refused every write and read sent there by hash (CAF02, re-routed there again until the writer
-- gave up, "routing is not converging", the documents API's 503), and the source's `open` row let
-- writers holding an older map through (issue #15).
--
-- A slot move writes the same lasting row for each key the directory keeps out of its slot
-- (`excluded_keys`): before its copy (in `copying`), a `directory` row `moved` to the key's
-- pinned shard on whichever of its two shards the pin does not name (move-port.ts
-- markExcludedKeys). Unpinned, such a key (routed by hash to where its rows are, as it seemed
-- safe) moved with its slot's move back to the old owner, whose `moved` row refused its every
-- write (CAF02, "routing is not converging").
--
-- So deleting such a pin is refused, SQLSTATE CAF06, naming the key and the move jobs. The
-- catalog knows every move (move_jobs rows are never deleted). A job wrote rows only
-- once it entered `copying` (the source is prepared in that state, move-machine.ts; `copying_at`
-- is stamped then and never cleared): a job planned and never run, or cancelled or failed before
-- it began copying, wrote none. Conservatively, a job in any state past `planned` other than
-- those two terminal ones counts even without `copying_at` (a row edited by hand). The mover
-- never deletes a pin (it pins over no entry and updates pins compare-and-set), so the trigger
-- does not need to tell it apart. Changing the key (never done by this project) is the deletion
-- of the old key's pin and is refused the same way; TRUNCATE too, when any pinned key has such a
-- job. Changing a pin's shard is not checked here (the spec says why).
--
-- The function runs as its owner (security definer), so that the check reads move_jobs whatever
-- the deleting login may read (a login granted DELETE on the directory alone would otherwise get
-- "permission denied for table move_jobs" instead of the reason), with the search path pinned and
-- every table qualified, as the other definer functions of this set.
--
-- The check looks up a key's jobs at every pin deletion (and every pinned key at a TRUNCATE):
-- indexes, since move_jobs only grows; a slot job's kept-out keys by `excluded_keys @> array[key]`.
create index move_jobs_directory_unit_idx on catalog.move_jobs (unit_id) where kind = 'directory';
create index move_jobs_excluded_keys_idx on catalog.move_jobs using gin (excluded_keys) where kind = 'slot';

create function catalog.directory_pin_moves(p_key text) returns text
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
  select string_agg(
           case when j.kind = 'directory' then format('#%s (%s to %s, %s)', j.id, j.from_shard, j.to_shard, j.state)
                else format('#%s (slot %s, %s to %s, %s, the key kept out)', j.id, j.slot, j.from_shard, j.to_shard, j.state) end,
           ', ' order by j.id)
    from catalog.move_jobs j
   where ((j.kind = 'directory' and j.unit_id = p_key)
          or (j.kind = 'slot' and j.excluded_keys operator(pg_catalog.@>) array[p_key]))
     and (j.copying_at is not null or j.state not in ('planned', 'failed', 'cancelled'))
$$;

revoke all on function catalog.directory_pin_moves(text) from public;

create function catalog.shard_directory_pin_kept() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  jobs text;
begin
  if tg_op = 'UPDATE' and new.key = old.key then
    return new;
  end if;
  jobs := catalog.directory_pin_moves(old.key);
  if jobs is not null then
    raise exception 'the pin of key % (to %) may not be removed: move job(s) % wrote fence rows for it on their shards, which decide for the key over its slot''s rows there for good; unpinned, it would route by hash and move with its slot''s next move, its writes refused (CAF02) or let through where it no longer lives. Nothing was changed. To give the key another owner, move it (a directory move, POST /shards/moves)',
      old.key, old.shard_id, jobs
      using errcode = 'CAF06', detail = format('key %s; move jobs %s', old.key, jobs),
            hint = 'change owners through moves: plan a directory move of the key to the shard it should live on';
  end if;
  return case when tg_op = 'DELETE' then old else new end;
end
$$;

create function catalog.shard_directory_truncate_kept() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  pinned text;
begin
  select d.key into pinned from catalog.shard_directory d
   where catalog.directory_pin_moves(d.key) is not null
   order by d.key limit 1;
  if pinned is not null then
    raise exception 'catalog.shard_directory may not be truncated: key % (and maybe others) has move job(s) that wrote fence rows for it (%), and must stay pinned. Nothing was changed',
      pinned, catalog.directory_pin_moves(pinned)
      using errcode = 'CAF06', detail = format('key %s', pinned);
  end if;
  return null;
end
$$;

revoke all on function catalog.shard_directory_pin_kept() from public;
revoke all on function catalog.shard_directory_truncate_kept() from public;

create trigger shard_directory_pin_kept before delete or update of key on catalog.shard_directory
  for each row execute function catalog.shard_directory_pin_kept();
create trigger shard_directory_truncate_kept before truncate on catalog.shard_directory
  for each statement execute function catalog.shard_directory_truncate_kept();
