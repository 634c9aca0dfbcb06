/**
 * Bundles the renderer CLI and its dependencies (zod) into one ESM file for Debian's `nodejs`
 * in the sidecar image. The Dockerfile and the tests call this same function, so the tests
 * run the file the container runs.
 *
 * @example
 * ```sh
 * npx tsx containers/nginx/bundle.ts /out/render.mjs
 * ```
 */
import { build } from 'esbuild';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { z } from 'zod';

/** Debian 12's `nodejs` package is Node 18. */
export const IMAGE_NODE_TARGET = 'node18';

/** Writes the bundled renderer CLI to `outfile`. */
export async function bundleRenderer(outfile: string): Promise<void> {
  await build({
    entryPoints: [fileURLToPath(new URL('./cli.ts', import.meta.url))],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: IMAGE_NODE_TARGET,
    legalComments: 'none',
    logLevel: 'warning',
  });
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = z.tuple([z.string().min(1)], { error: 'usage: bundle.ts OUTFILE' }).safeParse(process.argv.slice(2));
  if (!args.success) {
    console.error(args.error.issues.map((i) => i.message).join('; '));
    process.exitCode = 64;
  } else {
    await bundleRenderer(args.data[0]);
  }
}
