import { execFileSync, spawnSync } from 'node:child_process';
import { userInfo } from 'node:os';
import { afterAll, describe, expect, it } from 'vitest';
import { serverUser } from '../../../functions/adapters/postgres/embedded-cluster.js';

// A throwaway name: the real `postgres` user stays as it is.
const NAME = `ca_dms_t${process.pid}`;
const exists = (name: string): boolean => spawnSync('id', ['-u', name]).status === 0;

describe('the OS user PostgreSQL runs as', () => {
  afterAll(() => {
    if (exists(NAME)) execFileSync('userdel', [NAME]);
  });

  it('is ourselves for an ordinary user; as root, the named user, created once when missing (a fresh container has none)', () => {
    if (userInfo().uid !== 0) {
      expect(serverUser(NAME)).toEqual({});
      expect(exists(NAME)).toBe(false);
      return;
    }
    expect(exists(NAME)).toBe(false);
    const created = serverUser(NAME);
    const again = serverUser(NAME);

    expect(exists(NAME)).toBe(true);
    expect(created.uid).toBe(Number(execFileSync('id', ['-u', NAME], { encoding: 'utf8' }).trim()));
    expect(created.uid).not.toBe(0);
    expect(again).toEqual(created);
    // A system user: no login shell.
    expect(execFileSync('getent', ['passwd', NAME], { encoding: 'utf8' }).trim()).toMatch(/:\/usr\/sbin\/nologin$/);
  });
});
