/**
 * The real workload traces the policy benchmarks replay: `../shared/traces/` relative to the
 * repository root unless `--traces DIR` names another folder.
 */
import { readdir } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Where the traces live when no `--traces` flag is given. */
export const DEFAULT_TRACES_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '../../../shared/traces');

/**
 * The names of the `.csv` files in `dir`, sorted. A folder that cannot be read or holds no
 * trace ends the process with exit 1 and a message naming the benchmark and the folder, so a
 * missing folder never passes silently.
 *
 * @example
 * ```ts
 * for (const file of await traceFiles('bench:policies', dir)) await readTraceFile(join(dir, file));
 * ```
 */
export async function traceFiles(bench: string, dir: string): Promise<string[]> {
  let files: string[];
  try {
    files = (await readdir(dir)).filter((f) => f.endsWith('.csv')).sort();
  } catch (error) {
    console.error(`${bench}: cannot read the traces folder ${dir} (${(error as Error).message}); pass --traces DIR`);
    process.exit(1);
  }
  if (files.length === 0) {
    console.error(`${bench}: no .csv traces in ${dir}; pass --traces DIR`);
    process.exit(1);
  }
  return files;
}
