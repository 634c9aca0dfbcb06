-- Every catalog statement of the functions is bounded by the server, which cancels it: the
-- role's default in this database, because the alternatives pin or are lost behind RDS Proxy.
-- A `statement_timeout` startup parameter is not one RDS Proxy accepts (its PostgreSQL startup
-- message recognises user, database, replication, application_name, client_encoding,
-- DateStyle, TimeZone and extra_float_digits), and a session `SET` pins the client connection
-- to one database connection. A role default needs neither: the server applies it at login.
-- The migrations themselves lift it per transaction (`set local statement_timeout = 0`).
do $$
begin
  execute format('alter role %I in database %I set statement_timeout = %L', current_user, current_database(), '10s');
end
$$;
