/**
 * The nginx sidecar image's build context: the Dockerfile, the template, the entry point and
 * the renderer CLI bundled with its dependencies (zod) into one ESM file for Debian's `nodejs`.
 * The bundle is made here, outside the image, because no Node base image can be pulled where
 * the image is built; `npm run synth` (the CDK asset), CI's podman build and the tests all
 * stage the context with this one function, so they build and run the same files.
 *
 * @example
 * ```sh
 * npx tsx containers/stage.ts nginx /tmp/nginx-context && podman build /tmp/nginx-context
 * ```
 */
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { bundleForImage, sourceFile } from '../bundle.js';

const here = (file: string): string => sourceFile(import.meta.url, file);

/** Writes the bundled renderer CLI to `outfile`. */
export function bundleRenderer(outfile: string): void {
  bundleForImage(here('./cli.ts'), outfile);
}

/** Files copied as they are from this directory into the context. */
const CONTEXT_FILES = ['Dockerfile', 'nginx.conf.template', 'entrypoint.sh'] as const;

/**
 * Writes the image's build context into `dir` (created if absent) and returns `dir`. The
 * result depends only on the sources, so the CDK asset hash changes only when they do.
 */
export function stageNginxContext(dir: string): string {
  mkdirSync(dir, { recursive: true });
  for (const file of CONTEXT_FILES) copyFileSync(here(`./${file}`), join(dir, file));
  bundleRenderer(join(dir, 'render.mjs'));
  return dir;
}
