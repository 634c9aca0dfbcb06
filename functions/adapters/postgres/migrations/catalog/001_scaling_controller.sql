-- The scaling controller's catalog: versioned configuration, operator switches, per-service
-- state, the decision history (with explicit gaps), and the alarms received through SNS.

-- Every configuration change is a new row; the highest version is in force. The version is
-- the scaling API's ETag.
create table catalog.scaling_config (
  version integer primary key check (version >= 1),
  document jsonb not null,
  changed_by text not null,
  changed_at timestamptz not null default now(),
  comment text not null default ''
);

-- The global switch (scope '*') and per-service switches. No row means enabled.
create table catalog.scaling_switches (
  scope text primary key,
  enabled boolean not null,
  changed_by text not null,
  changed_at timestamptz not null default now(),
  reason text not null default ''
);

-- The ServiceState JSON of each service (events, recent recommendations, policy memory).
create table catalog.service_state (
  service text primary key,
  state jsonb not null,
  updated_at timestamptz not null default now()
);

create table catalog.scaling_decisions (
  id bigserial primary key,
  decided_at timestamptz not null,
  service text not null,
  trigger text not null check (trigger in ('schedule', 'alarm', 'api')),
  policy text not null,
  from_count integer not null check (from_count >= 0),
  to_count integer not null check (to_count >= 0),
  direction text not null check (direction in ('out', 'in', 'none')),
  reasons jsonb not null,
  blocked jsonb not null,
  metrics jsonb,
  dry_run boolean not null,
  outcome text not null check (outcome in ('applied', 'unchanged', 'blocked', 'failed', 'skipped')),
  error text,
  actor text,
  -- Taken while the catalog was unreachable, written once it was back.
  degraded boolean not null default false,
  config_version integer,
  recorded_at timestamptz not null default now()
);
create index scaling_decisions_time_idx on catalog.scaling_decisions (decided_at desc, id desc);
create index scaling_decisions_service_time_idx on catalog.scaling_decisions (service, decided_at desc, id desc);

-- Decisions that were only written to the function's logs (the in-memory backlog overflowed or
-- the container that held them was recycled): the history says so instead of staying silent.
create table catalog.history_gaps (
  id bigserial primary key,
  from_at timestamptz not null,
  to_at timestamptz not null,
  decisions integer not null check (decisions > 0),
  note text not null,
  recorded_at timestamptz not null default now()
);

-- CloudWatch alarm notifications; the SNS MessageId makes a redelivery a no-op.
create table catalog.scaling_alarms (
  message_id text primary key,
  alarm_name text not null,
  new_state text not null,
  service text,
  reason text not null default '',
  state_changed_at timestamptz,
  received_at timestamptz not null default now()
);
create index scaling_alarms_received_idx on catalog.scaling_alarms (received_at desc);
