-- A key moved by a directory move keeps its owner unless a move or a deliberate recovery changes
-- it (docs/sharding-spec.md section 9, "A key moved by a directory move stays pinned"). Sharding
-- migration 010 refuses the removal of such a key's pin (CAF06); an UPDATE of its `shard_id` by
-- hand went through, and had the same effects (issue #15, directory-pin-repinned.test.ts): the
-- move's fence rows decide for the key on its shards whatever the pin says, so a key moved A -> B
-- and pinned back to A by hand met A's `moved` row on every read and write (CAF02, re-routed to A
-- again: "routing is not converging", the documents API's 503), and the next directory move of
-- the key (from A, the pin's shard) stopped in `copying` for good ("the fence on A says ... is
-- moved"), holding its slot's moves up; pinned to a third shard C instead, which has no row of
-- the key, its reads answered an empty 200 from C while its documents stayed on B, and C took
-- its writes (a new user there: the key's data split over two shards).
--
-- So changing the shard of a pin of such a key (one catalog.directory_pin_moves, migration 010,
-- names jobs for) is refused, SQLSTATE CAF07, nothing changed, unless the transaction says who
-- writes it in the setting `ca_dms.pin_writer`:
--   * `move job #<id>`: a mover's publication (the flip, a lost flip published again; move-port.ts
--     publishOwner sets it, `set_config(..., true)`, in the transaction that publishes). Let
--     through only for an unfinished directory move job of this key whose target is the new shard.
--   * `by hand: <reason>`: a deliberate recovery, set by catalog.repin_by_hand (below), the
--     documented way to decide a key's owner by hand.
-- A guard against accidents, not against a superuser (or anyone who sets the setting himself):
-- the movers' defences stay for that case. The mover's other writes of pins insert over no
-- entry (pinToSourceOverNoEntry, the flip over a deleted pin), which this does not check.
-- CAF06 is not reused: the remedy differs (a removal is never needed; a change of owner is, by
-- a move or, when the spec says the owner "must be decided by hand", catalog.repin_by_hand).
create function catalog.shard_directory_owner_kept() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  jobs text;
  writer text := coalesce(current_setting('ca_dms.pin_writer', true), '');
  job bigint;
begin
  jobs := catalog.directory_pin_moves(old.key);
  if jobs is null or writer like 'by hand: %' then
    return new;
  end if;
  if writer ~ '^move job #[0-9]{1,18}$' then
    job := substring(writer from '[0-9]+')::bigint;
    if exists (select 1 from catalog.move_jobs j
                where j.id = job and j.kind = 'directory' and j.unit_id = new.key and j.to_shard = new.shard_id
                  and j.state not in ('done', 'failed', 'cancelled')) then
      return new;
    end if;
  end if;
  raise exception 'the pin of key % may not be changed from % to % by hand: move job(s) % wrote fence rows for it on their shards, which decide for the key whatever its pin says (a shard that is not its owner refuses it, CAF02, or takes its writes while its rows are elsewhere). Nothing was changed. To give the key another owner, move it (a directory move, POST /shards/moves); where its owner must be decided by hand, call catalog.repin_by_hand(key, shard, reason)%',
    old.key, old.shard_id, new.shard_id, jobs,
    case when writer = '' then '' else format(' (ca_dms.pin_writer "%s" names no unfinished directory move of this key to %s)', writer, new.shard_id) end
    using errcode = 'CAF07', detail = format('key %s; from %s to %s; move jobs %s', old.key, old.shard_id, new.shard_id, jobs),
          hint = 'change owners through moves; a recovery by hand: select * from catalog.repin_by_hand(key, shard, reason)';
end
$$;

revoke all on function catalog.shard_directory_owner_kept() from public;

create trigger shard_directory_owner_kept before update of shard_id on catalog.shard_directory
  for each row when (new.shard_id is distinct from old.shard_id)
  execute function catalog.shard_directory_owner_kept();

-- A deliberate decision of a key's owner by hand: pins `p_key` to `p_shard` (a UUID key in any
-- form PostgreSQL's uuid type reads, or as `urn:uuid:...`, is written in its canonical form, as
-- the directory stores it and the routers look it up: another form would pin a key nobody reads), recording in `updated_by` who (the session's login) and why.
-- The catalog cannot see the shards: the operator checks first that `p_shard` holds the key's
-- rows and that its `write_fences` row of the key (`kind = 'directory'`), if any, is `open`
-- (section 9). Returns the entry written.
create function catalog.repin_by_hand(p_key text, p_shard text, p_reason text) returns catalog.shard_directory
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
  entry catalog.shard_directory;
begin
  begin
    p_key := regexp_replace(p_key, '^urn:uuid:', '', 'i')::uuid::text;
  exception when invalid_text_representation then
    null; -- not a UUID: its text is the key (core/sharding/keys.ts canonicalKey)
  end;
  if coalesce(p_key, '') = '' or coalesce(p_shard, '') = '' or coalesce(btrim(p_reason), '') = '' then
    raise exception 'catalog.repin_by_hand(key, shard, reason): %', concat_ws(', ',
        case when coalesce(p_key, '') = '' then 'the key must not be empty' end,
        case when coalesce(p_shard, '') = '' then 'the shard must not be empty' end,
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

revoke all on function catalog.repin_by_hand(text, text, text) from public;
grant execute on function catalog.repin_by_hand(text, text, text) to ca_dms_control;
