-- The CA-DMS-like reference schema that lives on every shard primary: users and their
-- documents. `slot` is filled by the router (murmur3 slot of the owning user's id) so that a
-- slot's rows can be found, counted, copied and deleted without re-hashing in SQL.
create table users (
  id uuid primary key,
  slot integer not null check (slot >= 0),
  email text not null,
  display_name text not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index users_slot_idx on users (slot);

create table documents (
  id uuid primary key,
  owner_id uuid not null references users (id) on delete cascade,
  slot integer not null check (slot >= 0),
  title text not null,
  content jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index documents_slot_idx on documents (slot);
create index documents_owner_idx on documents (owner_id);
