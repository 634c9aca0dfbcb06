/**
 * Runs once before any test file: as root, makes sure the `postgres` OS user the test servers
 * run as exists (embedded-cluster.ts creates it when missing), so that parallel test files do
 * not race to create it.
 */
import { serverUser } from '../../functions/adapters/postgres/embedded-cluster.js';

export default function setup(): void {
  serverUser();
}
