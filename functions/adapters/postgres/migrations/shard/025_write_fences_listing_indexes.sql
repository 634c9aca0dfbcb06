-- The documents API's users listing reads, on each shard's replica, the fence rows that can still
-- matter to it (documents-api.ts, LIST_USERS_SQL): every `incoming` and `fenced` row (moves under
-- way) and the rows changed within the replicas' lag bound and a margin. `moved` and `open` rows
-- accumulate, one per unit ever moved, and the listing read every one of them for every page.
-- These indexes let it read only those it asks for. Fence rows change a few times per move, so
-- they cost the writers nothing (the application's writes do not update write_fences).
create index write_fences_updated_at_idx on write_fences (updated_at);
create index write_fences_in_move_idx on write_fences (state) where state in ('incoming', 'fenced');
