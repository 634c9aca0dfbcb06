-- A router not built by createShardingRuntime records its routing too (issue #15): the CA-DMS
-- backend (Python) and any other service routing by docs/sharding-spec.md log in to the catalog as
-- a member of ca_dms_app (migration 004), which may read the slot maps and the directory and
-- nothing else: migration 022 granted catalog.runtime_routings to ca_dms_control alone, so those
-- routers recorded nothing, and `ca-dms-scaling shards fences` judged their keys' fence rows by
-- the control plane's routing alone (settling by a route such a router may not take, where its
-- document differed). Giving ca_dms_app INSERT and UPDATE on the table would let it write any
-- row, in any shape the table's CHECK lets through (a routing with other values than the four
-- fields', which the review reads as "a routing this version cannot read"). This function is the
-- one way in for it: it checks the four fields' values, and writes as migration 022's runtimes do
-- (runtime-routings.ts recordRuntimeRouting: the row of that actor and routing inserted or its
-- seen_at moved, a lock waited for at most a second). docs/sharding-spec.md section 9 ("Recording
-- a router's routing") gives the call.
--
-- Safe on a live catalog and idempotent: a new function and its grants, no lock on a table.
create or replace function catalog.record_runtime_routing(p_actor text, p_routing jsonb) returns void
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
set lock_timeout = 1000
as $$
begin
  if coalesce(btrim(p_actor), '') = '' or length(p_actor) > 200 then
    raise exception 'the actor must be a name of 1 to 200 characters, not blank (the service recording its routing: ca-dms-backend, ...): nothing was recorded'
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
  insert into catalog.runtime_routings (actor, routing) values (p_actor, p_routing)
  on conflict (actor, routing) do update set seen_at = now();
end
$$;
revoke all on function catalog.record_runtime_routing(text, jsonb) from public;
grant execute on function catalog.record_runtime_routing(text, jsonb) to ca_dms_app, ca_dms_control;
