import { describe, expect, it } from 'vitest';
import { retryingSerializationFailures, SERIALIZATION_ATTEMPTS } from '../../../functions/adapters/postgres/sqlstate.js';

/** A statement that fails with `codes` in turn, then answers `ok`; counts its sends. */
function statement(codes: readonly string[]): { send: () => Promise<string>; sent: () => number } {
  let sent = 0;
  return {
    send: async () => {
      const code = codes[sent];
      sent += 1;
      if (code !== undefined) throw Object.assign(new Error(`failed with ${code}`), { code });
      return 'ok';
    },
    sent: () => sent,
  };
}

describe('retryingSerializationFailures', () => {
  it('sends a statement again after a serialization failure and answers what it answers then', async () => {
    const s = statement(['40001']);

    expect(await retryingSerializationFailures(s.send)).toBe('ok');
    expect(s.sent()).toBe(2);
  });

  it('throws the last serialization failure once the statement has been sent five times', async () => {
    const s = statement(Array.from({ length: 9 }, () => '40001'));

    await expect(retryingSerializationFailures(s.send)).rejects.toMatchObject({ code: '40001' });
    expect(s.sent()).toBe(SERIALIZATION_ATTEMPTS);
    expect(SERIALIZATION_ATTEMPTS).toBe(5);
  });

  it('throws any other failure at once', async () => {
    const s = statement(['40P01']);

    await expect(retryingSerializationFailures(s.send)).rejects.toMatchObject({ code: '40P01' });
    expect(s.sent()).toBe(1);
  });
});
