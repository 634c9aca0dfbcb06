-- Each directory key's slot, kept in catalog.shard_directory (issue #15; docs/sharding-spec.md
-- section 2, "The hash in SQL"; directory-slot.test.ts): the fence review and a map published by
-- hand ask for the pinned keys of the slots they judge, and read the WHOLE directory to find them
-- (unit-rows.ts pinnedKeysOf), since the directory had no slot and the hash was computed in
-- TypeScript alone: the review's listing of 500 dead hand changes' slot rows took 0.06 s with no
-- pin, 0.14 s at 10,000 pins, 0.73 s at 100,000 and 8.1-10.3 s at 1,000,000 (a pin a user moved by
-- a directory move; bench/fence-review.ts --directory, 2 shared cores at load 2.5-3.9), of the
-- API's 27 s, on every page of GET /shards/fences.
--
-- catalog.murmur3_32 is MurmurHash3_x86_32 (section 2), over bytes, unsigned, in bigint arithmetic
-- masked to 32 bits (int4 arithmetic raises on overflow): a 32x32 product is taken in two 16-bit
-- halves of the constant, each below 2^49. Checked against the spec's reference vectors and
-- against the TypeScript function on random bytes and strings (directory-slot.test.ts, fast-check).
-- catalog.key_slot(key) is murmur3 of the key's UTF-8 bytes mod 4096: the slot of a key as stored
-- (the stores store keys canonical; the readers keep only keys in the canonical UUID form, as
-- before). IMMUTABLE (the database's encoding never changes, so convert_to's answer does not),
-- PARALLEL SAFE, STRICT. No SET search_path: it would forbid inlining key_slot and cost a
-- configuration change a call; every name in the bodies is pg_catalog's (searched first when the
-- path does not name it) or schema-qualified, so no search path resolves them elsewhere.
--
-- The slot is a column filled by a trigger (BEFORE INSERT, and UPDATE naming key or slot: whatever
-- a writer in any language writes there, the trigger writes the key's slot), not an expression
-- index nor a generated column: either would compute every row's slot in this migration's
-- transaction, holding off the directory's writers meanwhile (a generated column rewrites the table
-- under ACCESS EXCLUSIVE, readers too). ADD COLUMN without a default changes the catalog only; the
-- index below is built on a column that is NULL everywhere, under the SHARE lock a pin waits for
-- meanwhile: the whole migration took 0.42-0.48 s at 100,000 pins and 1.5-1.6 s at 1,000,000 (2
-- shared cores at load 10-15, bench/directory-slot-fill.ts). The rows written before this
-- migration are filled by catalog.shard_directory_slot_fill in batches of their own transactions
-- (directory-slot-fill.ts, run after the sharding migrations by migrations.ts and local mode's
-- start: 100 s at 1,000,000 pins under that load, 12 us a row for the hash alone on a quiet host),
-- and until then the readers read the rows whose slot is NULL too and hash them as before: never a
-- pin missed, only read where it need not be.
create or replace function catalog.murmur3_32(p_bytes bytea, p_seed bigint default 0) returns bigint
language plpgsql
immutable strict parallel safe
as $$
declare
  n integer := length(p_bytes);
  blocks integer := n - n % 4;
  h bigint := p_seed & 4294967295;
  k bigint;
  i integer := 0;
begin
  while i < blocks loop
    k := get_byte(p_bytes, i)::bigint | (get_byte(p_bytes, i + 1)::bigint << 8) | (get_byte(p_bytes, i + 2)::bigint << 16) | (get_byte(p_bytes, i + 3)::bigint << 24);
    k := (k * 11601 + (((k * 52382) & 65535) << 16)) & 4294967295;   -- k * 0xcc9e2d51
    k := ((k << 15) | (k >> 17)) & 4294967295;
    k := (k * 13715 + (((k * 7047) & 65535) << 16)) & 4294967295;    -- k * 0x1b873593
    h := ((((h # k) << 13) | ((h # k) >> 19)) & 4294967295) * 5 + 3864292196;
    h := h & 4294967295;
    i := i + 4;
  end loop;
  if n % 4 > 0 then
    k := get_byte(p_bytes, i)::bigint;
    if n % 4 >= 2 then k := k | (get_byte(p_bytes, i + 1)::bigint << 8); end if;
    if n % 4 = 3 then k := k | (get_byte(p_bytes, i + 2)::bigint << 16); end if;
    k := (k * 11601 + (((k * 52382) & 65535) << 16)) & 4294967295;
    k := ((k << 15) | (k >> 17)) & 4294967295;
    k := (k * 13715 + (((k * 7047) & 65535) << 16)) & 4294967295;
    h := h # k;
  end if;
  h := h # n;
  h := h # (h >> 16);
  h := (h * 51819 + (((h * 34283) & 65535) << 16)) & 4294967295;    -- h * 0x85ebca6b
  h := h # (h >> 13);
  h := (h * 44597 + (((h * 49842) & 65535) << 16)) & 4294967295;    -- h * 0xc2b2ae35
  return h # (h >> 16);
end
$$;

create or replace function catalog.key_slot(p_key text) returns integer
language sql
immutable strict parallel safe
as $$ select (catalog.murmur3_32(pg_catalog.convert_to(p_key, 'UTF8')) % 4096)::integer $$;

alter table catalog.shard_directory add column if not exists slot integer;

-- Every insert, and every update naming key or slot, has its slot written here, computed once: a
-- writer's own value (a wrong one, NULL) is not kept. The fill below names the column to have it
-- written (SET slot = NULL).
create or replace function catalog.shard_directory_slot_kept() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  new.slot := catalog.key_slot(new.key);
  return new;
end
$$;
revoke all on function catalog.shard_directory_slot_kept() from public;

drop trigger if exists shard_directory_slot_kept on catalog.shard_directory;
create trigger shard_directory_slot_kept before insert or update of key, slot on catalog.shard_directory
  for each row execute function catalog.shard_directory_slot_kept();

create index if not exists shard_directory_slot_idx on catalog.shard_directory (slot);

-- The next p_batch keys past p_after (from the first where NULL), in key order: those whose slot
-- is NULL (written before this migration, or with the triggers off) given their slot; returns how
-- many, and the last key of the batch (pass it as p_after next; NULL: none left). Walked by the
-- primary key, not by `slot IS NULL`, whose index entries of the rows filled stay until a vacuum
-- and would be read again by every later batch (quadratic: 1,000,000 rows took 212 s, 100,000
-- 14 s; walked by key, 100 s and 12 s, on the same loaded host). A row a writer holds is skipped (SKIP LOCKED: a pin in flight is not
-- waited for, nor a deadlock risked with it); its slot stays NULL, read by the readers as such, and
-- filled by the next fill (each run of the migrations). A batch holds the pins of its own rows
-- only, for its own time (a pin written meanwhile waited 0.97 s at most with batches of 10,000, at
-- load 10-15; 0.14 s with the fill's 2,000, at load 9-10). The migration login's alone.
create or replace function catalog.shard_directory_slot_fill(p_after text, p_batch integer, out filled integer, out last_key text)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_batch is null or p_batch < 1 then
    raise exception 'catalog.shard_directory_slot_fill: the batch must be at least 1 row (got %). Nothing was changed', p_batch;
  end if;
  select max(b.key) into last_key
    from (select n.key from catalog.shard_directory n where p_after is null or n.key > p_after order by n.key limit p_batch) b;
  filled := 0;
  if last_key is null then
    return;
  end if;
  -- Naming the column fires the trigger, which writes the key's slot.
  update catalog.shard_directory d set slot = null
   where d.key in (select n.key from catalog.shard_directory n
                    where (p_after is null or n.key > p_after) and n.key <= last_key and n.slot is null
                      for update skip locked);
  get diagnostics filled = row_count;
end
$$;
revoke all on function catalog.shard_directory_slot_fill(text, integer) from public;
