/**
 * RDS for PostgreSQL's master user, emulated on a test cluster: a login that is NOT a superuser.
 * On RDS the master user is created `LOGIN NOSUPERUSER INHERIT CREATEDB CREATEROLE
 * NOREPLICATION` and is a member of `rds_superuser` (AWS, "Understanding the rds_superuser role",
 * https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/Appendix.PostgreSQL.CommonDBATasks.Roles.rds_superuser.html),
 * which holds the monitoring predefined roles and may grant them on to others; it owns the
 * database RDS creates (`DBName`). The test cluster's superuser plays `rdsadmin` and builds that
 * master. What is emulated, and why:
 *
 * - `rds_superuser` NOLOGIN, holding `pg_monitor`, `pg_read_all_stats`, `pg_read_all_settings`,
 *   `pg_stat_scan_tables`, `pg_signal_backend` and `pg_checkpoint` WITH ADMIN OPTION: AWS's page
 *   above says the master may grant roles, and from PostgreSQL 16 CREATEROLE alone no longer
 *   grants a role one lacks ADMIN OPTION on (PostgreSQL 16 release notes, "Restrict the
 *   privileges of CREATEROLE"). Grants of predefined roles as the master work on RDS 16+ in
 *   practice (gravitational/teleport#48897: rds_superuser members may grant roles there), so
 *   rds_superuser is given the ADMIN OPTION it needs for that, and nothing more.
 * - The master: the attributes above, a member of `rds_superuser`, owner of the given databases.
 * - Not emulated: whatever RDS lets rds_superuser do beyond PostgreSQL's own rules (e.g. create
 *   untrusted extensions such as `pg_stat_statements`). A migration relying on that fails under
 *   this emulation first, which is the point: it would need a decision, not luck.
 *
 * @example
 * ```ts
 * await emulateRdsMaster(server.url, { master: 'ca_dms_admin', password: 'pw', databases: ['ca_dms_1'] });
 * ```
 */
import pg from 'pg';

/** The predefined roles RDS makes rds_superuser a member of, with the option to grant them. */
export const RDS_SUPERUSER_ROLES = ['pg_monitor', 'pg_read_all_stats', 'pg_read_all_settings', 'pg_stat_scan_tables', 'pg_signal_backend', 'pg_checkpoint'] as const;

export interface RdsMasterOptions {
  /** The master user's name (a plain identifier). */
  readonly master: string;
  readonly password: string;
  /** Databases created owned by the master (plain identifiers). */
  readonly databases: readonly string[];
}

/** Creates `rds_superuser`, the master user and its databases, as the superuser of `adminUrl`. */
export async function emulateRdsMaster(adminUrl: string, options: RdsMasterOptions): Promise<void> {
  const rdsadmin = new pg.Client({ connectionString: adminUrl });
  await rdsadmin.connect();
  try {
    await rdsadmin.query('create role rds_superuser nologin');
    await rdsadmin.query(`grant ${RDS_SUPERUSER_ROLES.join(', ')} to rds_superuser with admin option`);
    await rdsadmin.query(`create role ${options.master} with login nosuperuser inherit createdb createrole noreplication password ${rdsadmin.escapeLiteral(options.password)}`);
    await rdsadmin.query(`grant rds_superuser to ${options.master}`);
    for (const db of options.databases) await rdsadmin.query(`create database ${db} owner ${options.master}`);
  } finally {
    await rdsadmin.end();
  }
}
