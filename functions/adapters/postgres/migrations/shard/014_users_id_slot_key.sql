-- The key migration 015 references: users (id, slot) is unique (id alone is already unique, so
-- this never refuses a row). Its own migration, so its own transaction: CREATE INDEX holds SHARE
-- on users until commit (reads of users and writes of documents go on, writes of users wait for
-- the build: the longer, the bigger the shard; time it on a copy of the largest shard before
-- deploying). Held together with 015's lock on documents in one transaction, it deadlocked with
-- a writer that had written documents and then wrote users (the moves' catch-up does), and the
-- migration failed. Not `add constraint ... unique`, whose ACCESS EXCLUSIVE lock would block
-- reads of users for the build as well.
create unique index users_id_slot_key on users (id, slot);
