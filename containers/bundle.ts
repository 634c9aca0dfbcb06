/**
 * What every image this repository builds has in common: its code is bundled by esbuild
 * outside the image (no Node base image can be pulled where images are built), into one ESM
 * file for the Node.js of Debian's `nodejs` package, which the Dockerfiles install.
 *
 * @example
 * ```ts
 * bundleForImage(sourceFile(import.meta.url, './server.ts'), join(dir, 'server.mjs'));
 * ```
 */
import { buildSync } from 'esbuild';
import { fileURLToPath } from 'node:url';
import { ESM_REQUIRE_BANNER } from '../lib/control-plane/control-plane-function.js';

/** Debian 12's `nodejs` package is Node 18. */
export const IMAGE_NODE_TARGET = 'node18';

/** The path of `file`, relative to the module whose `import.meta.url` is `base`. */
export function sourceFile(base: string, file: string): string {
  return fileURLToPath(new URL(file, base));
}

/**
 * Bundles `entry` with its dependencies into `outfile`. CommonJS dependencies (pg) get a
 * `require` through the banner, as the Lambda bundles do; `pg-native` is pg's optional native
 * driver, never loaded.
 */
export function bundleForImage(entry: string, outfile: string): void {
  buildSync({
    entryPoints: [entry],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: IMAGE_NODE_TARGET,
    banner: { js: ESM_REQUIRE_BANNER },
    external: ['pg-native'],
    legalComments: 'none',
    logLevel: 'warning',
  });
}
