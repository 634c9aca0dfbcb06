-- The routing each sharding runtime runs with, as it recorded it (issue #15, docs/sharding-spec.md
-- section 9, "Settling the rows a hand change left"): `ca-dms-scaling shards fences` judges a key's
-- directory fence rows by the shard the key routes to, which depends on the routing (strategy,
-- directory.override_hash, fallback, enabled), and the shards do not record it. The review read it
-- from the operator's SHARDING_CONFIG_JSON alone, and a shell whose document differed from the one
-- the deployed routers were started with (an old copy, another stage's) had the rows settled by a
-- route no router took. Now every runtime (the scaling API's and the moves worker's functions, local
-- mode; functions/adapters/postgres/sharding-runtime.ts) upserts its routing here once as it is
-- built, and the review uses the routings recorded recently where it is given none, and refuses
-- to settle where the one it is given differs from one of them.
--
-- One row per actor and routing, not per actor: during a change of the routing the containers
-- started before it still route by the old one until they are replaced, and a row per actor would
-- have the new routing hide them. One row per runtime would grow with every cold start; this table
-- holds a few rows (the actors times the routings they have run with) and never needs pruning.
-- `seen_at` is the last time a runtime of that actor was built with that routing (each cold start
-- moves it, a statement of its own; nothing per request), `first_seen_at` the first.
--
-- `routing` holds the four fields by their configuration names, every one always present:
-- {"strategy": "hash_based" | "range_based" | "directory_based", "override_hash": bool,
--  "fallback": "hash" | "reject", "enabled": bool}. jsonb equality ignores key order and spacing,
-- so the primary key tells routings apart by their values only.
--
-- The control login (catalog migration 006, the runtimes' catalog login on AWS and the review's)
-- records and reads; it may not delete (a record ages out of the review by its `seen_at`).
--
-- Safe on a live catalog and idempotent: a new table and a grant. A runtime that starts before this
-- migration is applied (a deploy applies the code and the migrations in either order) finds no
-- table, logs that it could not record its routing, and starts all the same.
create table if not exists catalog.runtime_routings (
  actor text not null check (actor <> ''),
  routing jsonb not null check (
    jsonb_typeof(routing) = 'object'
    and routing ?& array['strategy', 'override_hash', 'fallback', 'enabled']
  ),
  first_seen_at timestamptz not null default now(),
  seen_at timestamptz not null default now(),
  primary key (actor, routing)
);
revoke all on catalog.runtime_routings from public;
grant select, insert, update on catalog.runtime_routings to ca_dms_control;
