/**
 * Stages an image's build context into a directory, for a container build outside CDK (CI's
 * podman build, a developer's docker build). Exit 64 on bad usage, naming what is wrong.
 *
 * @example
 * ```sh
 * npx tsx containers/stage.ts nginx /tmp/ctx/nginx
 * podman build -t ca-dms-nginx /tmp/ctx/nginx
 * ```
 */
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { z } from 'zod';
import { stageBackendContext } from './backend/context.js';
import { stageNginxContext } from './nginx/context.js';

/** Each image this repository builds, by the name the CLI takes. */
export const IMAGE_CONTEXTS = {
  nginx: stageNginxContext,
  backend: stageBackendContext,
} as const satisfies Record<string, (dir: string) => string>;

const argsSchema = z.tuple(
  [
    z.enum(Object.keys(IMAGE_CONTEXTS) as [keyof typeof IMAGE_CONTEXTS], {
      error: `IMAGE must be one of: ${Object.keys(IMAGE_CONTEXTS).join(', ')}`,
    }),
    z.string({ error: 'OUTDIR is required' }).min(1, 'OUTDIR must not be empty'),
  ],
  { error: 'expected exactly IMAGE and OUTDIR' },
);

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = argsSchema.safeParse(process.argv.slice(2));
  if (!args.success) {
    console.error(`stage: ${args.error.issues.map((i) => i.message).join('; ')}\nusage: stage.ts IMAGE OUTDIR`);
    process.exitCode = 64;
  } else {
    const [image, outdir] = args.data;
    console.log(`stage: ${image} context in ${IMAGE_CONTEXTS[image](resolve(outdir))}`);
  }
}
