import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { DeadlinePassedError, NodeTimeoutError, SessionTimeoutError } from '../../../functions/adapters/postgres/deadline.js';
import { isNodeFailure, ReplicaDownError, ShardUnavailableError } from '../../../functions/adapters/postgres/replica-reader.js';

const dbError = (code: string, message = 'x'): pg.DatabaseError => Object.assign(new pg.DatabaseError(message, 1, 'error'), { code });
const sysError = (code: string, message: string): Error => Object.assign(new Error(message), { code, syscall: 'connect' });

// isNodeFailure decides whether a read moves on to the next node (its connection discarded) and
// whether the API answers a failure as the node's (503, "did not answer"): only the shapes
// node-postgres (node_modules/pg/lib/client.js, pg-pool/index.js) and Node's sockets actually
// produce for a failed node, and this layer's own errors of a silent node, count.
describe('isNodeFailure', () => {
  const nodeFailures: readonly [string, unknown][] = [
    ['ECONNREFUSED (a closed port)', sysError('ECONNREFUSED', 'connect ECONNREFUSED 127.0.0.1:5432')],
    ['ECONNRESET', sysError('ECONNRESET', 'read ECONNRESET')],
    ['EPIPE', sysError('EPIPE', 'write EPIPE')],
    ['ETIMEDOUT', sysError('ETIMEDOUT', 'connect ETIMEDOUT 10.0.0.1:5432')],
    ['ENOTFOUND (the address does not resolve)', sysError('ENOTFOUND', 'getaddrinfo ENOTFOUND db1.internal')],
    ['EAI_AGAIN (the resolver did not answer)', sysError('EAI_AGAIN', 'getaddrinfo EAI_AGAIN db1.internal')],
    ['EHOSTUNREACH', sysError('EHOSTUNREACH', 'connect EHOSTUNREACH 10.0.0.1:5432')],
    ["pg: the connection ended under a query", new Error('Connection terminated unexpectedly')],
    ['pg: the connection ended by the client', new Error('Connection terminated')],
    ["pg-pool: the pool's connectionTimeoutMillis", new Error('Connection terminated due to connection timeout', { cause: new Error('timeout expired') })],
    ["pg: the client's connectionTimeoutMillis", new Error('timeout expired')],
    ["pg-pool: no connection lent in time", new Error('timeout exceeded when trying to connect')],
    ["pg: the client's query_timeout", new Error('Query read timeout')],
    ['pg: a query on a client whose connection failed', new Error('Client has encountered a connection error and is not queryable')],
    ['pg: a query on a closed client', new Error('Client was closed and is not queryable')],
    ['57P01 admin_shutdown', dbError('57P01')],
    ['08006 connection_failure', dbError('08006')],
    ['53300 too_many_connections', dbError('53300')],
    ['40001 on a replica (a conflict with recovery)', dbError('40001')],
    ['NodeTimeoutError', new NodeTimeoutError('shard_001/primary', 2000)],
    ["DeadlinePassedError (no connection before the deadline)", new DeadlinePassedError('shard_001/primary', 'connect')],
    ["DeadlinePassedError (the node silent)", new DeadlinePassedError('shard_001/primary', 'query')],
    ['ReplicaDownError (ENODEDOWN)', new ReplicaDownError('shard_001/replica-1')],
    ['ShardUnavailableError (no node answered)', new ShardUnavailableError('shard_001', 'no node of shard shard_001 could serve the read: connect ECONNREFUSED 127.0.0.1:5432')],
  ];
  it.each(nodeFailures)('counts %s as a node failure', (_, error) => {
    expect(isNodeFailure(error)).toBe(true);
  });

  const notNodeFailures: readonly [string, unknown][] = [
    ["an application error whose message says 'timeout'", new Error('the session timeout of user 42 expired')],
    ["an application error whose message says 'connection'", new Error('no connection between document 7 and folder 9')],
    ["an application error whose message says 'terminated'", new Error('contract 12 was terminated')],
    ["an application error quoting pg's words in a longer message", new Error('import failed: Connection terminated unexpectedly was logged by the source')],
    ['a TypeError', new TypeError("Cannot read properties of undefined (reading 'timeout')")],
    ["the session's own statement_timeout (SessionTimeoutError)", new SessionTimeoutError('shard_001/primary', 'statement_timeout', dbError('57014', 'canceling statement due to statement timeout'))],
    ["a SQL error whose message says 'timeout' (42P01)", dbError('42P01', 'relation "timeout_log" does not exist')],
    ['23505 unique_violation', dbError('23505')],
    ['57014 query_canceled (told by its callers apart)', dbError('57014', 'canceling statement due to statement timeout')],
    ["Node's ERR_INVALID_ARG_TYPE (a program's misuse)", Object.assign(new TypeError('The "chunk" argument must be of type string'), { code: 'ERR_INVALID_ARG_TYPE' })],
    ["Node's ERR_TLS_CERT_ALTNAME_INVALID (a configuration's)", Object.assign(new Error("Hostname/IP does not match certificate's altnames"), { code: 'ERR_TLS_CERT_ALTNAME_INVALID' })],
    ['not an Error', 'Connection terminated unexpectedly'],
  ];
  it.each(notNodeFailures)('does not count %s as a node failure', (_, error) => {
    expect(isNodeFailure(error)).toBe(false);
  });
});
