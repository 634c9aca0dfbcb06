-- When a move job last moved forward, so that a job that runs without failing and without
-- progressing (a catch-up that never gets within its threshold, a fence given up and retried
-- forever, a verification that always runs over its budget) can be told from a long one that is
-- progressing. `updated_at` cannot say it: recording an error, renewing the lease and the
-- cutover's retries all touch it.
--
-- Progress is: a page copied (rows_copied grows), a batch of source rows deleted (rows_deleted
-- grows), or a state entered that the job does not come back from: copying, catching_up from
-- copying, cleaning_up, and the terminal states. The loop between catching_up, cutover and
-- verifying is not progress until it leaves for cleaning_up: that loop is where a move stalls.
-- A trigger sets it, so every writer of the job row (the mover, the API's cancel, an operator
-- with psql) keeps it right without knowing of it.
alter table catalog.move_jobs add column progressed_at timestamptz;
update catalog.move_jobs set progressed_at = coalesce(finished_at, updated_at, created_at);
alter table catalog.move_jobs
  alter column progressed_at set default now(),
  alter column progressed_at set not null;

create function catalog.move_job_progressed() returns trigger
language plpgsql as $$
begin
  if new.rows_copied > old.rows_copied
     or new.rows_deleted > old.rows_deleted
     or (new.state is distinct from old.state
         and (new.state in ('copying', 'cleaning_up', 'done', 'failed', 'cancelled')
              or (new.state = 'catching_up' and old.state = 'copying'))) then
    new.progressed_at := clock_timestamp();
  end if;
  return new;
end
$$;

create trigger move_job_progressed before update on catalog.move_jobs
  for each row execute function catalog.move_job_progressed();
