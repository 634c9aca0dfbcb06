-- Every start and stop, global or per service, as an event in the history with who asked and
-- whether it changed anything (start/stop are idempotent). A trigger records them, so every
-- writer of the switches (the API, the CLI, a future tool) is audited without remembering to.
create table catalog.switch_events (
  id bigserial primary key,
  at timestamptz not null default now(),
  scope text not null,
  enabled boolean not null,
  changed boolean not null,
  actor text not null,
  reason text not null default ''
);
create index switch_events_at_idx on catalog.switch_events (at desc, id desc);

create function catalog.record_switch_event() returns trigger language plpgsql as $$
begin
  insert into catalog.switch_events (scope, enabled, changed, actor, reason)
  values (
    new.scope,
    new.enabled,
    tg_op = 'INSERT' or old.enabled is distinct from new.enabled,
    new.changed_by,
    new.reason
  );
  return new;
end;
$$;

create trigger scaling_switches_audit
  after insert or update on catalog.scaling_switches
  for each row execute function catalog.record_switch_event();
