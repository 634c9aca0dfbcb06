/**
 * The demo backend image's build context: its Dockerfile and the server bundled by esbuild
 * (outside the image, for Debian's `nodejs`), staged like the nginx sidecar's.
 *
 * @example
 * ```sh
 * npx tsx containers/stage.ts backend /tmp/backend-context && podman build /tmp/backend-context
 * ```
 */
import { buildSync } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { IMAGE_NODE_TARGET } from '../nginx/context.js';

const here = (file: string): string => fileURLToPath(new URL(file, import.meta.url));

/** Writes the image's build context into `dir` (created if absent) and returns `dir`. */
export function stageBackendContext(dir: string): string {
  mkdirSync(dir, { recursive: true });
  copyFileSync(here('./Dockerfile'), join(dir, 'Dockerfile'));
  buildSync({
    entryPoints: [here('./server.ts')],
    outfile: join(dir, 'server.mjs'),
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: IMAGE_NODE_TARGET,
    legalComments: 'none',
    logLevel: 'warning',
  });
  return dir;
}
