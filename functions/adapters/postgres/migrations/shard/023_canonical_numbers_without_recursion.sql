-- jsonb_canonical_numbers (migration 022) without recursion: a content nested a few hundred
-- levels deep no longer fails the request digest with "stack depth limit exceeded" (54001).
--
-- Migration 022's function called itself once per level of nesting, in PL/pgSQL, whose frames are
-- large: with the default max_stack_depth (2 MB) `[[[ ... [1.0] ... ]]]` 600 levels deep was a
-- 54001, while jsonb itself stores 10,000 levels and more. Every writer computes the digest of its
-- request (and the documents API that of a keyed document written before key records, which any
-- writer may have stored), so such a content failed the keyed write instead of being compared
-- (test/integration/sharding/document-keys-schema.test.ts).
--
-- The function now works on jsonb's own text, which has no exponents and no insignificant spaces
-- in numbers: outside the strings (`"..."`, with their escapes), each number's trailing zeros after
-- its decimal point are removed (1.50 -> 1.5, 1.0 -> 1, 0.000 -> 0), and the text is read back as
-- jsonb (the same depth jsonb read it with before). The result is migration 022's, value for value:
-- the digest of every request stays what it was.
--
-- Safe on a live shard: CREATE OR REPLACE FUNCTION locks no table, keeps the function's owner and
-- grants (execute by the application role alone), and can run again.
do $migration$
declare
  nsp constant name := (select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = 'move_changes'::regclass);
  s constant text := quote_ident(nsp);
begin
  if to_regprocedure(format('%I.%s', nsp, 'jsonb_canonical_numbers(jsonb)')) is null then
    raise exception 'shard function %.jsonb_canonical_numbers(jsonb) not found beside move_changes: not replaced', nsp;
  end if;
  execute replace($fn$
create or replace function @S@.jsonb_canonical_numbers(v jsonb) returns jsonb language sql immutable strict parallel safe
  set search_path = pg_catalog, pg_temp
as $$
  select string_agg(
      case when t.m[1] is not null then t.m[1]
           else regexp_replace(t.m[2], '(\.[0-9]*[1-9])0+(?![0-9])|\.0+(?![0-9])', '\1', 'g') end,
      '' order by t.i)::jsonb
    from regexp_matches(v::text, '("(?:[^"\\]|\\.)*")|([^"]+)', 'g') with ordinality as t (m, i)
$$
$fn$, '@S@', s);
end
$migration$;
