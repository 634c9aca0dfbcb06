/**
 * sqlstate.ts `failureKind`: what the API says of a failed database call. README promises no
 * response carries a database's error text: the driver's message never comes through.
 */
import { describe, expect, it } from 'vitest';
import { NodeTimeoutError } from '../../../functions/adapters/postgres/deadline.js';
import { failureKind } from '../../../functions/adapters/postgres/sqlstate.js';

/** An error as node-postgres gives it: the server's or the socket's text, and a code. */
function driverError(message: string, code?: string): Error {
  return Object.assign(new Error(message), code === undefined ? {} : { code });
}

describe('failureKind', () => {
  it.each([
    [driverError('connect ECONNREFUSED 10.0.3.7:5432', 'ECONNREFUSED'), 'connection error ECONNREFUSED'],
    [driverError('getaddrinfo ENOTFOUND shard-2.internal', 'ENOTFOUND'), 'connection error ENOTFOUND'],
    [driverError('password authentication failed for user "ca_dms_monitor"', '28P01'), /^the login was refused \(SQLSTATE 28P01/],
    [driverError('role "ca_dms_monitor" does not exist', '28000'), /^the login was refused \(SQLSTATE 28000/],
    [driverError('database "ca_dms_2" does not exist', '3D000'), /^the database does not exist \(SQLSTATE 3D000\)/],
    [driverError('relation "write_fences" does not exist', '42P01'), /^a table is missing \(SQLSTATE 42P01\): apply the migrations/],
    [driverError('permission denied for table users', '42501'), /^this login lacks a privilege .*\(SQLSTATE 42501\)/],
    [driverError('canceling statement due to statement timeout', '57014'), 'a statement ran past its time limit'],
    [driverError('value too long for type character varying(10) at "secret"', '22001'), 'SQLSTATE 22001'],
    [driverError('self-signed certificate', 'DEPTH_ZERO_SELF_SIGNED_CERT'), /^connection error DEPTH_ZERO_SELF_SIGNED_CERT: check the server's certificate/],
    [driverError('Connection terminated due to connection timeout'), 'no answer in time'],
    [driverError('Connection terminated unexpectedly'), 'the connection was closed'],
    [new NodeTimeoutError('shard_002/primary', 2000), 'no answer within 2000 ms'],
    ['a string thrown at 10.0.3.7:5432', 'the connection failed'],
  ])('%s -> %s', (error, expected) => {
    const kind = failureKind(error);
    if (typeof expected === 'string') expect(kind).toBe(expected);
    else expect(kind).toMatch(expected);
    // Nothing of the driver's text: addresses, names, quoted objects.
    expect(kind).not.toMatch(/10\.0\.3\.7|ca_dms_monitor|write_fences|"|shard-2\.internal/);
  });

  it("uses the caller's words for a SQLSTATE it knows more of", () => {
    const advice = { '42P01': 'the shard has no write_fences table: apply the shard migrations' };
    expect(failureKind(driverError('relation "write_fences" does not exist', '42P01'), advice)).toBe(advice['42P01']);
    expect(failureKind(driverError('connect ECONNREFUSED 10.0.3.7:5432', 'ECONNREFUSED'), advice)).toBe('connection error ECONNREFUSED');
  });
});
