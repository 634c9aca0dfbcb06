-- The slowest statements in the scaling API's shard health come from the pg_stat_statements
-- view, which exists only in a database where CREATE EXTENSION ran. On AWS the parameter group
-- preloads the library on every instance, but nothing created the extension, so the health
-- reported the statements as unavailable there. Created here where the library is preloaded
-- (elsewhere the view would exist and refuse to answer), by a role allowed to: RDS's master user
-- (rds_superuser may create the extensions RDS supports) or a superuser. A role that may not,
-- such as a plain CREATEROLE owner, is told so and changes nothing; the health then reports the
-- statements unavailable, as before.
do $$
begin
  if current_setting('shared_preload_libraries') ~ '(^|[\s,])"?pg_stat_statements"?([\s,]|$)' then
    begin
      create extension if not exists pg_stat_statements;
    exception when insufficient_privilege then
      raise notice 'pg_stat_statements not created: % may not create it; shard health reports no statements', current_user;
    end;
  end if;
end
$$;
