-- Write fences and change capture for moves (functions/adapters/postgres/mover.ts).
--
-- Every writer goes through withShardWrite (write-transaction.ts), which takes a SHARED lock on
-- the fence rows of its key's slot and directory key inside its own transaction. The mover
-- creates the row for a unit before it starts copying and, at cutover, updates it to 'fenced'
-- (which waits for writers in flight); later writers see 'fenced' and wait, and after the map
-- flip they see 'moved' and go to the new owner. A missing row means 'open'.
create table write_fences (
  kind text not null check (kind in ('slot', 'directory')),
  unit_id text not null,
  state text not null default 'open' check (state in ('open', 'fenced', 'moved')),
  moved_to text,
  map_version bigint not null default 0,
  job_id bigint,
  updated_at timestamptz not null default now(),
  primary key (kind, unit_id)
);

-- Units whose changes are being captured for a move in progress (at most a handful of rows).
create table move_captures (
  job_id bigint primary key,
  kind text not null check (kind in ('slot', 'directory')),
  unit_id text not null,
  excluded_keys text[] not null default '{}'
);

-- Ids of rows written since capture began. The catch-up re-reads the current source row for
-- each id, so only the id is needed, and entries are consumed by deleting them (sequence order
-- is not commit order, so a cursor over seq could skip a late commit).
create table move_changes (
  seq bigserial primary key,
  job_id bigint not null,
  table_name text not null,
  row_id uuid not null
);
create index move_changes_job_idx on move_changes (job_id, seq);

-- Change capture by trigger rather than by updated_at or xmin: those cannot see deletes, and
-- updated_at depends on every writer setting it. The trigger also sees rows removed by
-- `on delete cascade`. When no move is in progress it costs one probe of an empty table.
-- tg_argv[0] names the column that holds the owning user's id (the directory key).
create function record_move_change() returns trigger language plpgsql as $$
declare
  owner_col constant text := tg_argv[0];
  rec jsonb;
begin
  if not exists (select 1 from move_captures) then
    return null;
  end if;
  foreach rec in array array[
    case when tg_op <> 'INSERT' then to_jsonb(old) end,
    case when tg_op <> 'DELETE' then to_jsonb(new) end
  ] loop
    continue when rec is null;
    insert into move_changes (job_id, table_name, row_id)
    select c.job_id, tg_table_name, (rec ->> 'id')::uuid
    from move_captures c
    where (c.kind = 'slot' and c.unit_id = rec ->> 'slot' and not ((rec ->> owner_col) = any (c.excluded_keys)))
       or (c.kind = 'directory' and c.unit_id = rec ->> owner_col);
  end loop;
  return null;
end
$$;

create trigger users_move_capture after insert or update or delete on users
  for each row execute function record_move_change('id');
create trigger documents_move_capture after insert or update or delete on documents
  for each row execute function record_move_change('owner_id');

-- The mover pages through a slot's rows in id order (keyset pagination); with (slot, id) each
-- page is an index range scan instead of a sort of the whole slot.
create index users_slot_id_idx on users (slot, id);
create index documents_slot_id_idx on documents (slot, id);
