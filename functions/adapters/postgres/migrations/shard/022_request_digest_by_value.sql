-- The request digest of an `Idempotency-Key` record (migration 021, docs/sharding-spec.md section
-- 10) compares numbers by value, as RFC 8259 and jsonb equality do.
--
-- Migration 021's digest hashed the jsonb text of {"title", "content"}. jsonb orders members, but
-- keeps each number's scale: `{"n": 1.50}` is stored and printed as 1.50, `{"n": 1.5}` as 1.5, so
-- two sends of one request by writers that format numbers differently (the Python backend passes
-- the client's text through, this API reformats it) had two digests, and the retry was a 422
-- where the comparison before key records (jsonb equality) said the same. The digest is now one
-- function every writer calls, so that no language has to reproduce the canonical form itself:
--
--   idempotency_request_digest(title text, content jsonb) -> bytea (32 bytes)
--     = sha256(convert_to(jsonb_build_object('title', title, 'content', c)::text, 'UTF8'))
--     where c is `content` with every number replaced by trim_scale(number) (1.50 -> 1.5,
--     1.0 -> 1, 0.10 -> 0.1; 1e2 is already 100 in jsonb).
--
-- The canonical form is only computed when the content's text has a number with a trailing zero
-- after its decimal point (a regular expression over the text, strings included, so at worst
-- it computes it for nothing): the usual content is hashed as before. A new function: records
-- written with 021's digest would differ only for such numbers, and none were written before
-- this release (migration 021 is in the same one).
--
-- It also puts document_keys beside the other sharded tables. Migration 021 created it in
-- current_schema(): on a shard where a schema named like the migration login ("$user", first in
-- the default search_path) was created after migration 001, that is this schema, not the one of
-- users, documents and the move's tables, where the application's search_path does not look and
-- where the fence function's insert-meets-copy branch (which names the tables' schema) does not
-- find it for an insert. Moved (ALTER TABLE SET SCHEMA keeps its indexes, triggers, foreign key and
-- grants): nothing could be written into it there.
--
-- Both functions are pure, pinned to search_path pg_catalog, pg_temp (migration 013/019), and
-- executable by the application role alone (the writer of key records).
do $migration$
declare
  nsp constant name := (select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = 'move_changes'::regclass);
  s constant text := quote_ident(nsp);
  keys_nsp constant name := (select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = 'document_keys'::regclass);
begin
  if keys_nsp <> nsp then
    execute format('alter table %I.document_keys set schema %I', keys_nsp, nsp);
  end if;
  execute replace($fn$
create function @S@.jsonb_canonical_numbers(v jsonb) returns jsonb language plpgsql immutable strict parallel safe
  set search_path = pg_catalog, pg_temp
as $$
begin
  case jsonb_typeof(v)
    when 'number' then
      return to_jsonb(trim_scale(v::numeric));
    when 'array' then
      return coalesce((select jsonb_agg(@S@.jsonb_canonical_numbers(e) order by i) from jsonb_array_elements(v) with ordinality as a (e, i)), '[]'::jsonb);
    when 'object' then
      return coalesce((select jsonb_object_agg(k, @S@.jsonb_canonical_numbers(e)) from jsonb_each(v) as o (k, e)), '{}'::jsonb);
    else
      return v;
  end case;
end
$$
$fn$, '@S@', s);
  execute replace($fn$
create function @S@.idempotency_request_digest(title text, content jsonb) returns bytea language sql stable parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select sha256(convert_to(jsonb_build_object(
    'title', title,
    'content', case when content::text ~ '\.[0-9]*0([^0-9]|$)' then @S@.jsonb_canonical_numbers(content) else content end
  )::text, 'UTF8'))
$$
$fn$, '@S@', s);
  execute format('revoke all on function %I.jsonb_canonical_numbers(jsonb) from public', nsp);
  execute format('revoke all on function %I.idempotency_request_digest(text, jsonb) from public', nsp);
  -- Not SECURITY DEFINER: the caller needs both.
  execute format('grant execute on function %I.jsonb_canonical_numbers(jsonb) to ca_dms_app', nsp);
  execute format('grant execute on function %I.idempotency_request_digest(text, jsonb) to ca_dms_app', nsp);
end
$migration$;
