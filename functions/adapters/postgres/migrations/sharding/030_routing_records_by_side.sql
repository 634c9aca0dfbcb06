-- A control runtime's routing record and an application login's keyed apart (issue #15, after
-- migration 027). The table kept one row per actor and routing (migration 022's primary key), and
-- migration 027 kept the sides apart in the function only: a control runtime's record
-- (runtime-routings.ts recordRuntimeRouting, as the control login: `insert ... on conflict (actor,
-- routing) do update set seen_at = now()`) under a name and routing an application login had
-- recorded first (ca-dms-backend, say: the function refuses an application login a control
-- runtime's name only once that runtime has recorded) moved the application's row's seen_at and
-- wrote no row of its own. The application's row then stood for both: named in the review as the
-- application login's, its seen_at the runtime's, and the runtime's record missing from the side
-- whose records supersede each other (runtime-routings.test.ts, "a control runtime's record under
-- a name and routing an application login recorded first moves no application row").
--
-- Now the primary key is (actor, routing, by_application): a record of each side is a row of its
-- own, and neither side's upsert names the other's row (its conflict target includes the side).
-- The runtimes' statement names no conflict target (it updates its own side's row, else inserts;
-- runtime-routings.ts), so that a runtime built before this migration is applied still records
-- without touching an application's row; the function below, replaced, names the new key (027's
-- `on conflict (actor, routing)` has no constraint to match once the key changes). A runtime of the
-- code before this migration (its statement names that target) fails its record with 42P10 once
-- the key is changed, is told, and starts all the same (as before migration 022), until the code
-- shipped with this migration replaces it.
--
-- Safe on a live catalog and idempotent: the key changed only where it is not already this one,
-- under the table's ACCESS EXCLUSIVE lock for as long as it takes to index a table of a few rows
-- (a cold start's record waits at most its second, RECORD_LOCK_WAIT_MS, and starts all the same);
-- every row stays as it is (no two rows share an actor and routing before, so none do after).
do $$
begin
  if (select array_agg(a.attname::text order by a.attname)
        from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey)
       where i.indrelid = 'catalog.runtime_routings'::regclass and i.indisprimary)
     is distinct from array['actor', 'by_application', 'routing'] then
    alter table catalog.runtime_routings
      drop constraint runtime_routings_pkey,
      add constraint runtime_routings_pkey primary key (actor, routing, by_application);
  end if;
end
$$;

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
    on conflict (actor, routing, by_application) do update set seen_at = now();
    return;
  end if;
  if exists (select 1 from catalog.runtime_routings r where r.actor = p_actor and not r.by_application) then
    raise exception 'the actor % is a control-plane sharding runtime''s (its records are the control login''s): an application login may not record under its name; record under the service''s own name (ca-dms-backend, ...): nothing was recorded', p_actor
      using errcode = '42501';
  end if;
  insert into catalog.runtime_routings (actor, routing, by_application) values (p_actor, p_routing, true)
  on conflict (actor, routing, by_application) do update set seen_at = now();
  -- A runtime's record of the name committed since the check above (this statement sees it, READ
  -- COMMITTED): the name is the runtime's, and this record is undone with the refusal.
  if exists (select 1 from catalog.runtime_routings r where r.actor = p_actor and not r.by_application) then
    raise exception 'the actor % is a control-plane sharding runtime''s (it recorded under this name meanwhile): an application login may not record under its name; record under the service''s own name (ca-dms-backend, ...): nothing was recorded', p_actor
      using errcode = '42501';
  end if;
end
$$;
