/**
 * The command registry of the operator CLI: one entry per `bin/commands/<name>.ts`. A command
 * module is imported only when that command runs, so a quick command never loads a heavy
 * one's dependencies (PostgreSQL binaries, the AWS SDK).
 *
 * @example
 * ```ts
 * const command = await COMMANDS['simulate']?.load();
 * const exitCode = await command?.run(['--trace', 'nasa.csv'], io);
 * ```
 */
import type { CliCommand } from './kit.js';

export interface CommandEntry {
  /** One line for the command list (kept here so listing commands imports none of them). */
  readonly summary: string;
  readonly load: () => Promise<CliCommand>;
}

export const COMMANDS: Readonly<Record<string, CommandEntry>> = {
  start: {
    summary: 'run the whole system locally: embedded shards, controller, API, dashboard',
    load: async () => (await import('./start.js')).startCommand,
  },
  load: {
    summary: 'run the load-test mix (documents + scaling API) against a URL',
    load: async () => (await import('./load.js')).loadCommand,
  },
  migrate: {
    summary: 'apply pending database migrations to the catalog and every shard',
    load: async () => (await import('./migrate.js')).migrateCommand,
  },
  shards: {
    summary: "list (and with --settle, fix) the shards' write_fences rows that no live move explains",
    load: async () => (await import('./shards.js')).shardsCommand,
  },
  simulate: {
    summary: 'replay a workload trace through scaling policies and score them',
    load: async () => (await import('./simulate.js')).simulateCommand,
  },
};
