-- An application login's routing records kept apart from the control plane's runtimes' (issue #15,
-- after migration 026). catalog.record_runtime_routing let any member of ca_dms_app (the CA-DMS
-- backend's login: the most exposed of the catalog's logins, a web application's) record under any
-- actor's name, 'scaling-api' and 'scaling-moves' among them, and `shards fences` marks a record
-- "superseded" where its actor recorded another routing since. One call recording another routing
-- under 'scaling-api' marked the scaling API's true record superseded, `--ignore-superseded` then
-- left it out, and with no SHARDING_CONFIG_JSON the forged routing alone judged the keys' fence
-- rows: a row on the shard every router sends a key's writes to was set `moved` to a shard none
-- sends them to (runtime-routings.test.ts, "an application login's records ... cannot hide a
-- runtime's"). A call recording the runtimes' own old routing did the same from the other side: it
-- moved the old record's seen_at, and the routing they were built with since became the superseded
-- one.
--
-- Now each record says whether an application login wrote it (`by_application`, set by the
-- function alone: the control plane's runtimes insert their rows directly, as the control login,
-- and those take the default, false), and:
-- - the function refuses (42501) an application login's record under an actor a record of the
--   control plane names (the runtimes' own names), and never moves such a record's seen_at (the
--   upsert's update is the application's own rows' only: a runtime's row of the same actor and
--   routing written meanwhile is left as it is, and refused the same way);
-- - the review (runtime-routings.ts, recordedRoutings) counts a record as superseded only by a
--   newer record of the same actor written by the same side: an actor's name the application
--   login took first (before any runtime recorded under it) supersedes no runtime's record, and
--   its records, still counted, are named as the application login's in the listing;
-- - the actor is a service's name, 1 to 200 of letters, digits and `. _ - : @ /`, starting with a
--   letter or digit (22023 else): the review prints it in its listing and refusals, where a newline
--   or a terminal's escape sequence made a line of its own or hid one.
--
-- Safe on a live catalog and idempotent: a column with a constant default (no rewrite; the
-- table's ACCESS EXCLUSIVE lock for that moment, a cold start's record waiting at most its second
-- and starting all the same, RECORD_LOCK_WAIT_MS), `create or replace` of migration 026's function
-- (same signature and attributes; its grants kept). A record written through the function before
-- this migration (026 and 027 ship together) reads as a runtime's.
alter table catalog.runtime_routings add column if not exists by_application boolean not null default false;

create or replace function catalog.record_runtime_routing(p_actor text, p_routing jsonb) returns void
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
set lock_timeout = 1000
as $$
declare
  -- A member of the control role (a runtime's login, on AWS) and the catalog's owner (this
  -- function's: current_user here) record as the runtimes do; any other login is an application's.
  -- session_user: the login that called, whatever this function runs as.
  by_app constant boolean := not (pg_has_role(session_user, 'ca_dms_control', 'member') or session_user = current_user);
begin
  if p_actor is null or length(p_actor) > 200 or p_actor !~ '^[A-Za-z0-9][A-Za-z0-9._:@/-]*$' then
    raise exception 'the actor % is not a service''s name: give 1 to 200 of letters, digits and . _ - : @ /, starting with a letter or a digit (ca-dms-backend, ...): nothing was recorded', coalesce(quote_literal(left(p_actor, 60)), 'NULL')
      using errcode = '22023';
  end if;
  if p_routing is null or jsonb_typeof(p_routing) <> 'object'
     or (select array_agg(k order by k) from jsonb_object_keys(p_routing) k) is distinct from array['enabled', 'fallback', 'override_hash', 'strategy']
     or coalesce(p_routing ->> 'strategy', '') not in ('hash_based', 'range_based', 'directory_based')
     or jsonb_typeof(p_routing -> 'override_hash') <> 'boolean'
     or coalesce(p_routing ->> 'fallback', '') not in ('hash', 'reject')
     or jsonb_typeof(p_routing -> 'enabled') <> 'boolean' then
    raise exception 'the routing % is not one this catalog records: give exactly {"strategy": "hash_based" | "range_based" | "directory_based", "override_hash": true | false, "fallback": "hash" | "reject", "enabled": true | false}, the sharding configuration''s values the router runs with: nothing was recorded', coalesce(left(p_routing::text, 300), 'NULL')
      using errcode = '22023';
  end if;
  if not by_app then
    insert into catalog.runtime_routings (actor, routing) values (p_actor, p_routing)
    on conflict (actor, routing) do update set seen_at = now();
    return;
  end if;
  if exists (select 1 from catalog.runtime_routings r where r.actor = p_actor and not r.by_application) then
    raise exception 'the actor % is a control-plane sharding runtime''s (its records are the control login''s): an application login may not record under its name; record under the service''s own name (ca-dms-backend, ...): nothing was recorded', p_actor
      using errcode = '42501';
  end if;
  insert into catalog.runtime_routings (actor, routing, by_application) values (p_actor, p_routing, true)
  on conflict (actor, routing) do update set seen_at = now() where runtime_routings.by_application;
  if not found then
    raise exception 'the actor % is a control-plane sharding runtime''s (it recorded this routing meanwhile): an application login may not record under its name; record under the service''s own name (ca-dms-backend, ...): nothing was recorded', p_actor
      using errcode = '42501';
  end if;
end
$$;
