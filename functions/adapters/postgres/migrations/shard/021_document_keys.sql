-- Idempotency keys that outlive their documents (functions/local/documents-api.ts, README
-- "Idempotency-Key", docs/sharding-spec.md section 10).
--
-- Until now a keyed POST /api/v1/documents derived the document's id from the owner and the key,
-- so the key was remembered by its document alone: a late retry after the application deleted
-- the document created it again (a delete undone by a retry), and a retry after an edit was
-- compared with the edited document (a 422 for the request the key had made). A key is now a row
-- of its own, on the owner's shard, written in the same transaction as the document it creates:
--
--   id              UUID version 5 of `<owner id>:<key>` in the API's name-space: the key's
--                   identity (one owner's key, a digest of both); concurrent attempts with one key
--                   meet on this primary key. A uuid `id` like every sharded table's, so the move's
--                   change capture, catch-up, comparison and clean-up take it as they take
--                   documents.
--   owner_id, slot  the owner and the owner's slot, tied to users (id, slot) as documents are
--                   (migration 015), so a key lives in its owner's unit and moves with it.
--   document_id     the document the key created (no foreign key: it outlives the document).
--   request_digest  sha-256 of the canonical request: the jsonb text of
--                   {"title": title, "content": content} (jsonb orders members), in UTF-8.
--   created_at      the key's age: past the published retention (24 h) it is expired and
--                   behaves as new; expired rows are pruned by the owner's next writes.
--
-- The table gets everything documents has: the write fence (004/007/012/018/019), the move's
-- change capture (002/019), the TRUNCATE guard (004), the insert-meets-copy check (018, here a
-- branch of the fence function), the pinned search_path (013/019) and the grants of the
-- application, mover and monitor roles (003/006/019). A new, empty table: the foreign key is
-- created valid at no cost, but it takes SHARE ROW EXCLUSIVE on users (as migration 015's did on
-- documents): it waits for writers of users in flight, within the runner's lock_timeout (and is
-- tried again), and holds new writes of users for the moment this transaction takes to commit.
-- Deploy order: this migration, then the moves worker that knows the table (move-port.ts TABLES),
-- then the API that writes it. A mover of an earlier release ignores the table's captured changes
-- and its clean-up (triggers skipped) would delete the users of key records and leave those
-- records behind; with no record written yet there is nothing for it to miss.
create table document_keys (
  id uuid primary key,
  owner_id uuid not null,
  slot integer not null check (slot >= 0),
  document_id uuid not null,
  request_digest bytea not null check (length(request_digest) = 32),
  created_at timestamptz not null default now(),
  constraint document_keys_owner_slot_fkey foreign key (owner_id, slot) references users (id, slot) on delete cascade
);
-- The move's keyset pages (as documents_slot_id_idx), and an owner's keys by age (the foreign
-- key's cascade, the pruning of expired keys on the owner's writes).
create index document_keys_slot_id_idx on document_keys (slot, id);
create index document_keys_owner_created_idx on document_keys (owner_id, created_at);

create trigger document_keys_write_fence before insert or update or delete on document_keys
  for each row execute function enforce_write_fence('owner_id');
create trigger document_keys_move_capture after insert or update or delete on document_keys
  for each row execute function record_move_change('owner_id');
create trigger document_keys_truncate_guard before truncate on document_keys
  for each statement execute function refuse_truncate_during_move();

grant select, insert, update, delete on document_keys to ca_dms_app;
grant select on document_keys to ca_dms_monitor;
grant select, insert, update, delete on document_keys to ca_dms_mover;

-- The insert-meets-copy check of migration 018 (a new row's id held here by a row of a unit this
-- shard does not own answers 23505 in every statement form) covers document_keys too. A key's id
-- names its owner, so such a row would be of the same unit and the fence check before it already
-- refuses the write; the branch keeps the rule "every sharded table" true for other writers. The
-- body is 019's otherwise, created the same way (search_path pinned, tables qualified).
do $migration$
declare
  nsp constant name := (select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = 'move_changes'::regclass);
  s constant text := quote_ident(nsp);
begin
  if to_regprocedure(format('%I.enforce_write_fence()', nsp)) is null then
    raise exception 'shard function %.enforce_write_fence() not found beside move_changes: not replaced', nsp;
  end if;
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
    elsif tg_table_name = 'document_keys' then
      select to_jsonb(t) into held from @S@.document_keys t where t.id = new.id;
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
end
$migration$;
