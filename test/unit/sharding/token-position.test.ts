import { describe, expect, it } from 'vitest';
import { TOKEN_POSITION_SQL, tokenPositionSql } from '../../../functions/adapters/postgres/token-position.js';

/**
 * A transaction's own `synchronous_commit` decides where its token points (token-position.ts):
 * the insert position for off, whose commit record may not be flushed when the COMMIT is answered.
 * PostgreSQL takes `off` in several spellings (the enum's hidden boolean entries, any case); only
 * the exact 'off' was read as off, and a caller passing `transactionSetting: 'false'` (the value it
 * set itself) got the flush position, which its commit may lie past (h149).
 */
describe('tokenPositionSql: the spellings of synchronous_commit = off', () => {
  it.each(['off', 'OFF', 'Off', 'false', 'FALSE', 'no', 'No', '0'])('takes %j for off: the insert position', (setting) => {
    expect(tokenPositionSql(setting)).toBe('pg_current_wal_insert_lsn()');
  });

  it.each(['on', 'ON', 'true', 'yes', '1', 'local', 'remote_write', 'remote_apply', 'REMOTE_APPLY'])('takes %j for a flushed commit: the flush position', (setting) => {
    expect(tokenPositionSql(setting)).toBe('pg_current_wal_flush_lsn()');
  });

  it('reads the session setting after the commit when the transaction setting is not known', () => {
    expect(tokenPositionSql(undefined)).toBe(TOKEN_POSITION_SQL);
  });
});
