/**
 * Global setup of `npm run test:images`: exports each image under test (built beforehand by
 * .ci/images, named by environment variables) once, and hands its description to the test
 * files. A missing variable or image fails the run: these tests exist to fail when the image
 * is broken, never to skip.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { exportImage, type ExportedImage } from './rootfs.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** The nginx sidecar image, exported; absent outside `npm run test:images`. */
    nginxImage: ExportedImage | undefined;
    /** The demo backend image, exported; absent outside `npm run test:images`. */
    backendImage: ExportedImage | undefined;
  }
}

/** The variables naming the images, e.g. `localhost/ca-dms-nginx:ci`. */
export const IMAGE_VARIABLES = { nginxImage: 'CA_DMS_NGINX_IMAGE', backendImage: 'CA_DMS_BACKEND_IMAGE' } as const;

export default function setup(project: TestProject): () => void {
  const parent = mkdtempSync(join(tmpdir(), 'ca-dms-images-'));
  try {
    for (const [key, variable] of Object.entries(IMAGE_VARIABLES) as [keyof typeof IMAGE_VARIABLES, string][]) {
      const name = process.env[variable];
      if (name === undefined || name === '') {
        throw new Error(`${variable} must name the image to test (build it first: bash .ci/images)`);
      }
      project.provide(key, exportImage(name, parent));
    }
  } catch (error) {
    rmSync(parent, { recursive: true, force: true });
    throw error;
  }
  return () => rmSync(parent, { recursive: true, force: true });
}
