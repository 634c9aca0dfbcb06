-- Leases: at most one holder of a named piece of work at a time (the scaling evaluation, the
-- shard moves worker), replacing Lambda reserved concurrency 1, which a new account cannot
-- grant (AWS keeps 10 unreserved executions and new accounts have a quota of 10). A lease is a
-- row, taken and released by single statements: nothing is held on a connection, so it pins
-- no RDS Proxy connection and needs no session. A holder that dies simply lets its lease expire.
create table catalog.leases (
  name        text primary key,
  holder      text not null,
  acquired_at timestamptz not null default now(),
  expires_at  timestamptz not null,
  check (expires_at > acquired_at)
);
