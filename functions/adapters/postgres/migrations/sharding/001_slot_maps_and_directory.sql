-- The shard catalog: versioned slot maps for hash routing and the directory for
-- directory-based routing (and per-tenant overrides of the hash strategy).
create table catalog.slot_maps (
  version integer primary key check (version >= 1),
  slot_count integer not null check (slot_count > 0),
  -- assignments[i] is the shard id that owns slot i (0-based slot, 1-based array).
  assignments text[] not null check (cardinality(assignments) = slot_count),
  created_at timestamptz not null default now(),
  created_by text not null,
  reason text not null
);

create table catalog.shard_directory (
  key text primary key,
  shard_id text not null,
  -- Bumped on every change so cached entries can be checked cheaply.
  version bigint not null default 1,
  updated_at timestamptz not null default now(),
  updated_by text not null
);
create index shard_directory_shard_idx on catalog.shard_directory (shard_id);
