-- Three ways the application login (a member of ca_dms_app only) got past the move's fence or
-- into its change capture, closed (test/integration/sharding/app-sql-privileges.test.ts).
--
-- 1. The move log was the login's to write. The change capture (migration 002) ran as the
--    writer, so migration 003 granted ca_dms_app INSERT on move_changes and USAGE on its
--    sequence: any login of the application could append entries for any job, with any
--    captured_at, as many as it liked. An entry only makes the catch-up re-read a row, so no
--    acknowledged row is lost, but a flood of them keeps a move's catch-up from ever getting
--    down to the fence (the move stalls), fills the disk, and the lag a move reports is what
--    the entries say. The capture function now runs as its owner (SECURITY DEFINER: the login
--    that runs the migrations, which owns move_changes), EXECUTE revoked from PUBLIC (a trigger
--    function is never called, and firing a trigger checks no EXECUTE); the application role
--    loses INSERT on move_changes and USAGE on its sequence. It keeps SELECT on move_captures
--    (its writers read `moving_to`, migration 011). The mover keeps its own grants.
--
-- 2. The mover's pass followed current_user, which a foreign key's cascade changes: the delete a
--    user's deletion cascades to runs as the owner of documents, a member of ca_dms_mover (a
--    superuser; RDS's master user, which holds ADMIN on the role since it created it). So a
--    login that set `ca_dms.move_writer` and deleted a user deleted, through the owner, that
--    user's documents in a fenced, incoming or moved unit, unchecked. Only a document whose
--    slot is not its owner's can be in another unit than its owner (written before migration
--    015, whose key is NOT VALID, so such rows may remain until an operator validates it), but
--    a write there is exactly what the fence exists to refuse: after the move's last catch-up
--    it is not carried to the new owner. The pass now follows session_user, the login that
--    authenticated (SET ROLE, SECURITY DEFINER and cascades change current_user, never
--    session_user, which only a superuser can change): the mover's logins and a superuser pass
--    as before, and nothing an application login runs does.
--
-- 3. Migration 013 pinned the functions' search_path to the shard's schema, pg_temp last. That
--    keeps temporary tables out, but the schema itself stays in the path for functions and
--    operators, and on PostgreSQL 14 (the deployment config allows it) PUBLIC may create in
--    the public schema: a login could create `public.to_jsonb(documents)`, which the fence's
--    `to_jsonb(new)` then calls instead of pg_catalog's polymorphic one (an exact type match
--    wins over `anyelement`, CVE-2018-1058's pattern), and answer any slot it likes: its
--    writes passed fenced and moved units and escaped the capture, and the move's clean-up
--    deleted them after they were acknowledged. Run by the mover's writes (the capture fires
--    for them too) or, after 1, by the capture as its owner, the same function would run the
--    login's code with those rights. Every function of the shard migrations that names a
--    table now runs with search_path = pg_catalog, pg_temp (as 016's and 017's do) and names
--    its tables with the shard's schema (the one holding move_changes), qualified when this
--    migration runs; the bodies are otherwise those of 002, 004, 010 and 018. A function added
--    later must be created the same way (app-sql-privileges checks every function of the
--    schema). CREATE on the schema is also revoked from PUBLIC where this login may.
--
-- Safe on a live shard: no table is locked (CREATE OR REPLACE FUNCTION updates
-- pg_proc, GRANT/REVOKE pg_class, pg_proc and pg_namespace; none locks users, documents or the
-- move tables: the migration completes while another session holds ACCESS EXCLUSIVE on all of
-- them). Each session picks the new definitions up at its next statement. A capture running in
-- a statement that began before this commits and appends after it is refused (42501): that
-- write fails whole and its caller sees the error (withShardWrite does not retry 42501); nothing
-- is acknowledged without its capture (app-sql-privileges and app-sql-move-phases run a write
-- and a move across this migration). Every statement can run again with the same result
-- (CREATE OR REPLACE keeps each function's owner and grants).
do $migration$
declare
  -- The schema that holds the shard's tables, where the migrations' unqualified names resolve
  -- (not current_schema(): a schema named like this login, "$user" in the default search_path,
  -- created since migration 001, would come first and get copies of the functions while the
  -- triggers kept running the old ones).
  nsp constant name := (select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = 'move_changes'::regclass);
  s constant text := quote_ident(nsp);
  fn text;
begin
  foreach fn in array array['enforce_write_fence()', 'record_move_change()', 'refuse_truncate_during_move()', 'move_permit_claim(bigint, bigint)', 'move_permit_hold(bigint, bigint)'] loop
    if to_regprocedure(format('%I.%s', nsp, fn)) is null then
      raise exception 'shard function %.% not found beside move_changes: not replaced', nsp, fn;
    end if;
  end loop;
  execute replace($fn$
create or replace function @S@.enforce_write_fence() returns trigger language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
declare
  owner_col constant text := tg_argv[0];
  rec jsonb;
  f record;
  held jsonb;
begin
  if current_setting('ca_dms.move_writer', true) = 'on' and pg_has_role(session_user, 'ca_dms_mover', 'member') then
    return case when tg_op = 'DELETE' then old else new end;
  end if;
  if current_setting('transaction_isolation') <> 'read committed' then
    raise exception 'write to % refused: writes to sharded tables must run at READ COMMITTED, not %', tg_table_name, upper(current_setting('transaction_isolation'))
      using errcode = 'CAF05',
            hint = 'A snapshot taken before a move began cannot see its fence or its change capture; see docs/sharding-spec.md section 9.';
  end if;
  if not exists (select 1 from @S@.write_fences) then
    return case when tg_op = 'DELETE' then old else new end;
  end if;
  foreach rec in array array[
    case when tg_op <> 'INSERT' then to_jsonb(old) end,
    case when tg_op <> 'DELETE' then to_jsonb(new) end
  ] loop
    continue when rec is null;
    select w.kind, w.unit_id, w.state, w.moved_to, w.map_version into f
      from @S@.write_fences w
     where (w.kind = 'directory' and w.unit_id = rec ->> owner_col)
        or (w.kind = 'slot' and w.unit_id = rec ->> 'slot' and not ((rec ->> owner_col) = any (w.excluded_keys)))
     order by w.kind = 'directory' desc
     limit 1
       for share;
    continue when not found or f.state = 'open';
    if f.state in ('fenced', 'incoming') then
      raise exception 'write to % % refused: a move is cutting it over; retry shortly', f.kind, f.unit_id
        using errcode = 'CAF01', detail = format('fence state %s, map version %s', f.state, f.map_version);
    end if;
    raise exception 'write to % % refused: this shard does not own it (%)', f.kind, f.unit_id,
        format('moved to %s in map version %s', f.moved_to, f.map_version)
      using errcode = 'CAF02', detail = format('fence state %s, moved_to %s, map version %s', f.state, coalesce(f.moved_to, '-'), f.map_version);
  end loop;
  if tg_op = 'INSERT' then
    -- Static statements (plans cached per session), one per sharded table.
    if tg_table_name = 'documents' then
      select to_jsonb(t) into held from @S@.documents t where t.id = new.id;
    elsif tg_table_name = 'users' then
      select to_jsonb(t) into held from @S@.users t where t.id = new.id;
    end if;
    if held is not null then
      select w.state into f
        from @S@.write_fences w
       where (w.kind = 'directory' and w.unit_id = held ->> owner_col)
          or (w.kind = 'slot' and w.unit_id = held ->> 'slot' and not ((held ->> owner_col) = any (w.excluded_keys)))
       order by w.kind = 'directory' desc
       limit 1;
      if found and f.state in ('incoming', 'moved') then
        raise exception 'duplicate key value violates unique constraint "%"', tg_table_name || '_pkey'
          using errcode = 'unique_violation', schema = tg_table_schema, table = tg_table_name, constraint = tg_table_name || '_pkey',
                detail = format('Key (id)=(%s) already exists.', new.id),
                hint = format('The row holding this id is of a unit that is %s on this shard (a move''s copy or a moved unit''s rows before its clean-up): while the shard that owns that unit no longer holds the id, retry shortly (docs/sharding-spec.md section 9).', f.state);
      end if;
    end if;
  end if;
  return case when tg_op = 'DELETE' then old else new end;
end
$$
$fn$, '@S@', s);
  execute replace($fn$
create or replace function @S@.record_move_change() returns trigger language plpgsql
  security definer
  set search_path = pg_catalog, pg_temp
as $$
declare
  owner_col constant text := tg_argv[0];
  rec jsonb;
begin
  if not exists (select 1 from @S@.move_captures) then
    return null;
  end if;
  foreach rec in array array[
    case when tg_op <> 'INSERT' then to_jsonb(old) end,
    case when tg_op <> 'DELETE' then to_jsonb(new) end
  ] loop
    continue when rec is null;
    insert into @S@.move_changes (job_id, table_name, row_id)
    select c.job_id, tg_table_name, (rec ->> 'id')::uuid
    from @S@.move_captures c
    where (c.kind = 'slot' and c.unit_id = rec ->> 'slot' and not ((rec ->> owner_col) = any (c.excluded_keys)))
       or (c.kind = 'directory' and c.unit_id = rec ->> owner_col);
  end loop;
  return null;
end
$$
$fn$, '@S@', s);
  execute replace($fn$
create or replace function @S@.refuse_truncate_during_move() returns trigger language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  if exists (select 1 from @S@.move_captures) then
    raise exception 'TRUNCATE % refused: a move is capturing changes on this shard (it would bypass the capture); wait for the move to finish or cancel it', tg_table_name
      using errcode = 'CAF03';
  end if;
  return null;
end
$$
$fn$, '@S@', s);
  execute replace($fn$
create or replace function @S@.move_permit_claim(p_job bigint, p_epoch bigint) returns void language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
begin
  insert into @S@.move_permits as p (job_id, lease_epoch) values (p_job, p_epoch)
  on conflict (job_id) do update set lease_epoch = excluded.lease_epoch, updated_at = clock_timestamp()
    where p.lease_epoch <= excluded.lease_epoch;
  if not found then
    raise exception 'move job % with lease epoch % may not write on this shard: a later run of the job holds its permit', p_job, p_epoch
      using errcode = 'CAF04', detail = format('permit epoch %s', (select lease_epoch from @S@.move_permits where job_id = p_job));
  end if;
end
$$
$fn$, '@S@', s);
  execute replace($fn$
create or replace function @S@.move_permit_hold(p_job bigint, p_epoch bigint) returns void language plpgsql
  set search_path = pg_catalog, pg_temp
as $$
declare
  held bigint;
begin
  select lease_epoch into held from @S@.move_permits where job_id = p_job for share;
  if held is distinct from p_epoch then
    raise exception 'move job % with lease epoch % may not write on this shard: %', p_job, p_epoch,
        case when held is null then 'it has not claimed the permit' else format('the permit is held by epoch %s', held) end
      using errcode = 'CAF04';
  end if;
end
$$
$fn$, '@S@', s);
  execute format('revoke all on function %I.record_move_change() from public', nsp);
  execute format('revoke insert on %I.move_changes from ca_dms_app', nsp);
  execute format('revoke usage on sequence %I.move_changes_seq_seq from ca_dms_app', nsp);
end
$migration$;

-- Defence in depth, as migration 013's TEMP: nobody but the migration login creates objects in
-- the shard's schema. PostgreSQL 14 (which the deployment config allows) grants CREATE on the
-- public schema to PUBLIC; 15 and later do not, so there this changes nothing. A login that does
-- not own the schema gets a warning, not an error, from the revoke, so what is left is checked:
-- the pinned search_path above holds either way (and the catalog, beside shard 1, shares this
-- schema: its own functions do not pin theirs).
do $$
declare
  nsp constant name := (select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = 'move_changes'::regclass);
begin
  execute format('revoke create on schema %I from public', nsp);
  if has_schema_privilege('ca_dms_app', nsp, 'CREATE') then
    raise notice 'ca_dms_app may still create in schema % (not revoked from PUBLIC: this login does not own it); revoke it as its owner', nsp;
  end if;
exception when insufficient_privilege then
  raise notice 'CREATE on schema % not revoked from PUBLIC (this login may not): the functions'' pinned search_path still holds', nsp;
end
$$;
