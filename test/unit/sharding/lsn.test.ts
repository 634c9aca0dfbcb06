import { describe, expect, it } from 'vitest';
import { formatLsn, isLsn, LsnError, lsnBytesBehind, normalizeWalPosition, parseLsn } from '../../../functions/core/sharding/lsn.js';

describe('WAL positions', () => {
  it('parses the two hexadecimal halves PostgreSQL prints into one 64-bit position', () => {
    expect(parseLsn('16/B374D848')).toBe((0x16n << 32n) | 0xb374d848n);
    expect(parseLsn('0/0')).toBe(0n);
  });

  it('formats a position the way PostgreSQL does, so tokens round-trip', () => {
    expect(formatLsn(parseLsn('16/b374d848'))).toBe('16/B374D848');
  });

  it('rejects text that is not a WAL position, with a typed error', () => {
    expect(() => parseLsn('16-B374D848')).toThrow(LsnError);
    expect(() => parseLsn('1/123456789')).toThrow(LsnError);
    expect(isLsn('0/3000148')).toBe(true);
    expect(isLsn('')).toBe(false);
  });

  it('measures how many bytes one position trails another, never negative', () => {
    expect(lsnBytesBehind(parseLsn('0/3000148'), parseLsn('0/3000000'))).toBe(0x148n);
    expect(lsnBytesBehind(parseLsn('0/3000000'), parseLsn('0/3000148'))).toBe(0n);
  });

  it('moves an insert position that sits just past a page header back to the page boundary', () => {
    expect(normalizeWalPosition(parseLsn('0/5000028'))).toBe(parseLsn('0/5000000')); // segment start: long header
    expect(normalizeWalPosition(parseLsn('0/5002018'))).toBe(parseLsn('0/5002000')); // any page: short header
  });

  it('leaves every other position alone', () => {
    expect(normalizeWalPosition(parseLsn('0/5002148'))).toBe(parseLsn('0/5002148'));
    expect(normalizeWalPosition(parseLsn('0/5002000'))).toBe(parseLsn('0/5002000'));
  });
});
