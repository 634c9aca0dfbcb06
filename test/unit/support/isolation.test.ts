/**
 * The integration and end-to-end files share workers unless test/support/isolation.ts lists them:
 * a file that changes process-wide state must be listed, or the next file in its worker inherits
 * what it changed.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ISOLATED_FILES, SHARED_STATE } from '../../support/isolation.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));

function testFilesUnder(dir: string): string[] {
  return readdirSync(join(ROOT, dir), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.test.ts'))
    .map((f) => relative(ROOT, join(ROOT, dir, f)).split('\\').join('/'))
    .sort();
}

describe('which integration files share a worker', () => {
  const files = [...testFilesUnder('test/integration'), ...testFilesUnder('test/e2e')];

  it('finds the files it judges', () => {
    expect(files.length).toBeGreaterThan(100);
  });

  it('runs every file that changes process-wide state isolated', () => {
    const unlisted = files.filter((f) => !(f in ISOLATED_FILES) && SHARED_STATE.test(readFileSync(join(ROOT, f), 'utf8')));
    expect(unlisted, 'add these to ISOLATED_FILES in test/support/isolation.ts, with the reason').toEqual([]);
  });

  it('lists only files that exist', () => {
    expect(Object.keys(ISOLATED_FILES).filter((f) => !existsSync(join(ROOT, f)))).toEqual([]);
  });

  it('matches what changes process-wide state, and not what only reads it', () => {
    for (const line of [
      "process.env['POWERTOOLS_LOG_LEVEL'] = 'INFO';",
      'process.env.MIN_INSTANCES = "8";',
      'delete process.env.MIN_INSTANCES;',
      "vi.mock('../x.js');",
      "vi.spyOn(process.stdout, 'write');",
      'const sm = mockClient(SecretsManagerClient);',
      "process.on('unhandledRejection', f);",
      '(globalThis as unknown as { x: number }).x = 1;',
    ]) {
      expect(SHARED_STATE.test(line), line).toBe(true);
    }
    for (const line of ["const runs = Number(process.env['FUZZ_RUNS'] ?? 25);", "if (process.env.CHAOS === 'x') {}", 'spawn(cmd, { env: { ...process.env, A: "1" } });']) {
      expect(SHARED_STATE.test(line), line).toBe(false);
    }
  });
});
