-- Data moves between shards, recorded so that a mover killed at any step can be resumed (or
-- rolled back) by the next one. The state machine is functions/core/sharding/move-plan.ts.
create table catalog.move_jobs (
  id bigserial primary key,
  kind text not null check (kind in ('slot', 'directory')),
  -- The slot number as text for a slot move, the directory key for a directory move.
  unit_id text not null,
  -- The hash slot the unit lives in (for a directory key: the slot of the key). At most one
  -- unfinished move per slot, so a slot and a key inside it never move at the same time.
  slot integer not null check (slot >= 0),
  from_shard text not null,
  to_shard text not null,
  state text not null default 'planned' check (state in
    ('planned', 'copying', 'catching_up', 'cutover', 'verifying', 'cleaning_up', 'done', 'failed', 'cancelled')),
  cancel_requested boolean not null default false,
  -- Set, only while cancel_requested is false, just before the new owner is published. From
  -- then on the move can only finish (see move-plan.ts).
  flip_started_at timestamptz,
  -- Directory keys hashing into a moving slot stay where the directory puts them.
  excluded_keys text[] not null default '{}',
  -- Keyset position of the bulk copy: {"table": "...", "after": "<last id copied>"}.
  copy_cursor jsonb,
  rows_copied bigint not null default 0,
  changes_applied bigint not null default 0,
  rows_deleted bigint not null default 0,
  -- Per table {"users": {"rows": n, "checksum": "..."}, ...} on each side at verification.
  source_summary jsonb,
  target_summary jsonb,
  -- Slot-map version for a slot move; the directory entry's version for a directory move.
  map_version_before bigint,
  map_version_after bigint,
  created_by text not null,
  reason text not null default '',
  error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  copying_at timestamptz,
  catching_up_at timestamptz,
  cutover_at timestamptz,
  fenced_at timestamptz,
  verifying_at timestamptz,
  unfenced_at timestamptz,
  cleaning_up_at timestamptz,
  finished_at timestamptz,
  check (from_shard <> to_shard)
);
create unique index move_jobs_one_active_per_slot on catalog.move_jobs (slot)
  where state not in ('done', 'failed', 'cancelled');
create index move_jobs_state_idx on catalog.move_jobs (state);
