-- A job's permit goes only to an epoch higher than the one that claimed it before, no longer to
-- the same epoch again (migration 010 accepted `lease_epoch <= claimed epoch`).
--
-- An epoch is unique only while the catalog keeps every claim. A catalog failover to a standby
-- behind the primary can lose one: a run's claim (epoch n + 1) committed on the old primary, the
-- run claimed its permits here and is still alive, and the next claim on the promoted catalog
-- hands out epoch n + 1 again, to another run. Both runs then held the permit (equal epochs), both
-- wrote here, and the run whose claim was lost finished the move while the catalog named the
-- other as the job's holder (test/integration/sharding/moves-lease-epoch-loss.test.ts). Now the
-- second claim of an epoch is refused (CAF04, naming the lost claim); that run stops before it
-- writes, and the job's next run, one epoch higher on the catalog, takes the permit over from
-- both. A run claims its permit once per shard, so no run ever claims its own epoch twice.
--
-- Created as migration 019 creates the shard's functions (search_path pinned, the shard's tables
-- qualified); the body is otherwise migration 019's. Safe on a live shard: CREATE OR REPLACE
-- FUNCTION locks no table, keeps the function's owner and grants, and can run again.
do $migration$
declare
  nsp constant name := (select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = 'move_permits'::regclass);
  s constant text := quote_ident(nsp);
begin
  if to_regprocedure(format('%I.%s', nsp, 'move_permit_claim(bigint, bigint)')) is null then
    raise exception 'shard function %.move_permit_claim(bigint, bigint) not found beside move_permits: not replaced', nsp;
  end if;
  execute replace($fn$
create or replace function @S@.move_permit_claim(p_job bigint, p_epoch bigint) returns void language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
declare
  held bigint;
begin
  insert into @S@.move_permits as p (job_id, lease_epoch) values (p_job, p_epoch)
  on conflict (job_id) do update set lease_epoch = excluded.lease_epoch, updated_at = clock_timestamp()
    where p.lease_epoch < excluded.lease_epoch;
  if not found then
    select lease_epoch into held from @S@.move_permits where job_id = p_job;
    if held = p_epoch then
      raise exception 'move job % with lease epoch % may not write on this shard: another run of the job claimed it with this same epoch (the catalog lost that claim: a failover to a standby behind it?); the job''s next run claims a higher epoch', p_job, p_epoch
        using errcode = 'CAF04', detail = format('permit epoch %s', held);
    end if;
    raise exception 'move job % with lease epoch % may not write on this shard: a later run of the job holds its permit', p_job, p_epoch
      using errcode = 'CAF04', detail = format('permit epoch %s', held);
  end if;
end
$$
$fn$, '@S@', s);
end
$migration$;
