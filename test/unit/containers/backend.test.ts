import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rdsCaBundlePem } from '../../../containers/backend/context.js';
import { parseBackendEnv, startBackendServer } from '../../../containers/backend/server.js';
import { shardCredentialVariables } from '../../../containers/backend/settings.js';

const SHARDING = JSON.stringify({
  strategy: 'hash_based',
  default_shard: 'shard-001',
  shards: ['shard-001', 'shard-002'].map((id) => ({ shard_id: id, database_url: `postgresql://${id}.db.example:5432/ca_dms?sslmode=verify-full`, weight: 1, read_replicas: [`postgresql://${id}-r1.db.example:5432/ca_dms?sslmode=verify-full`] })),
});
const CREDENTIALS = { SHARD_001_DB_USERNAME: 'app', SHARD_001_DB_PASSWORD: 'p@ss word', SHARD_002_DB_USERNAME: 'app', SHARD_002_DB_PASSWORD: 'other' };
const VALID = { SHARDING_CONFIG_JSON: SHARDING, ...CREDENTIALS };

const messageOf = (env: Record<string, string | undefined>): string => {
  try {
    parseBackendEnv(env);
  } catch (error) {
    return (error as Error).message;
  }
  throw new Error('expected the settings to be refused');
};

describe('parseBackendEnv', () => {
  it('takes port 8000, a writable role and the compiled-in RDS CAs when only the shards are set', () => {
    const settings = parseBackendEnv(VALID);

    expect(settings).toMatchObject({ PORT: 8000, DATABASE_READ_ONLY: false, KEEPALIVE_TIMEOUT_SECONDS: 5, DATABASE_REQUEST_DEADLINE_MS: 5000 });
    expect(settings.ca).toBeUndefined();
  });

  it('puts each shard\'s credentials, URL-encoded, into its primary and replica URLs, and reads the catalog on the default shard', () => {
    const settings = parseBackendEnv(VALID);

    expect(settings.logins).toEqual({ kind: 'environment' });
    expect(settings.sharding.shards[0]?.database_url).toBe('postgresql://app:p%40ss%20word@shard-001.db.example:5432/ca_dms?sslmode=verify-full');
    expect(settings.sharding.shards[1]?.read_replicas).toEqual(['postgresql://app:other@shard-002-r1.db.example:5432/ca_dms?sslmode=verify-full']);
    expect(settings.catalogShardId).toBe('shard-001');
    expect(parseBackendEnv({ ...VALID, CATALOG_SHARD_ID: 'shard-002' }).catalogShardId).toBe('shard-002');
  });

  describe('logins from Secrets Manager (SHARD_<ID>_DB_SECRET_ARN)', () => {
    const arn = (id: string) => `arn:aws:secretsmanager:eu-west-1:123456789012:secret:ca-dms-dev/${id}/app-AbCdEf`;
    const ARNS = { SHARD_001_DB_SECRET_ARN: arn('shard-001'), SHARD_002_DB_SECRET_ARN: arn('shard-002') };
    const ON_AWS = { SHARDING_CONFIG_JSON: SHARDING, ...ARNS, AWS_REGION: 'eu-west-1' };

    it('takes every shard\'s secret ARN and the task\'s region, leaving the URLs without a login', () => {
      const settings = parseBackendEnv(ON_AWS);

      expect(settings.logins).toEqual({ kind: 'secrets-manager', region: 'eu-west-1', secretArns: new Map([['shard-001', arn('shard-001')], ['shard-002', arn('shard-002')]]) });
      expect(settings.sharding.shards[0]?.database_url).toBe('postgresql://shard-001.db.example:5432/ca_dms?sslmode=verify-full');
      expect(parseBackendEnv({ ...ON_AWS, AWS_REGION: undefined, AWS_DEFAULT_REGION: 'eu-central-1' }).logins).toMatchObject({ region: 'eu-central-1' });
    });

    it('refuses a login in the environment beside the secret, naming both variables and printing no password', () => {
      const message = messageOf({ ...ON_AWS, SHARD_002_DB_USERNAME: 'app', SHARD_002_DB_PASSWORD: 'hidden' });

      expect(message).toContain('SHARD_002_DB_USERNAME: must not be set with SHARD_002_DB_SECRET_ARN: the login comes from the secret');
      expect(message).toContain('SHARD_002_DB_PASSWORD: must not be set with SHARD_002_DB_SECRET_ARN');
      expect(message).not.toContain('hidden');
    });

    it('requires every shard\'s secret once one shard has one, a valid ARN and a region', () => {
      const missing = messageOf({ ...ON_AWS, SHARD_002_DB_SECRET_ARN: undefined, SHARD_002_DB_USERNAME: 'app', SHARD_002_DB_PASSWORD: 'p' });
      const invalid = messageOf({ ...ON_AWS, SHARD_001_DB_SECRET_ARN: 'ca-dms-dev/shard-001/app' });
      const noRegion = messageOf({ ...ON_AWS, AWS_REGION: undefined });

      expect(missing).toContain('SHARD_002_DB_SECRET_ARN: is required: the login secret of shard shard-002 (SHARD_001_DB_SECRET_ARN is set');
      expect(invalid).toContain('SHARD_001_DB_SECRET_ARN: expected a Secrets Manager secret ARN (got "ca-dms-dev/shard-001/app")');
      expect(noRegion).toContain('AWS_REGION: is required with the shards\' secret ARNs');
    });

    it('refuses a shard with neither a secret nor a login, naming both ways', () => {
      expect(messageOf({ SHARDING_CONFIG_JSON: SHARDING, SHARD_001_DB_USERNAME: 'app', SHARD_001_DB_PASSWORD: 'p' })).toContain(
        'SHARD_002_DB_USERNAME: is required: the login for shard shard-002, or give SHARD_002_DB_SECRET_ARN to read the login from Secrets Manager',
      );
    });
  });

  it('names every invalid variable with its value', () => {
    expect(messageOf({ ...VALID, PORT: '80', CA_DMS_SERVICE: 'backend', DATABASE_READ_ONLY: 'yes' })).toMatch(
      /PORT: must be at least 1024 \(the image runs unprivileged\) \(got "80"\)[\s\S]*CA_DMS_SERVICE: must be backend-read, backend-write, frontend or worker[\s\S]*DATABASE_READ_ONLY: must be true or false/,
    );
  });

  it('takes the documents API request deadline in ms, and names one out of range', () => {
    expect(parseBackendEnv({ ...VALID, DATABASE_REQUEST_DEADLINE_MS: '2500' }).DATABASE_REQUEST_DEADLINE_MS).toBe(2500);
    expect(messageOf({ ...VALID, DATABASE_REQUEST_DEADLINE_MS: '0' })).toMatch(/DATABASE_REQUEST_DEADLINE_MS: must be at least 100/);
  });

    it('names a missing sharding configuration', () => {
    expect(messageOf(CREDENTIALS)).toContain('SHARDING_CONFIG_JSON: is required');
  });

  it('names each shard credential that is missing, never printing a password', () => {
    const message = messageOf({ SHARDING_CONFIG_JSON: SHARDING, SHARD_001_DB_USERNAME: 'app', SHARD_001_DB_PASSWORD: 'secret', SHARD_002_DB_PASSWORD: 'hidden' });

    expect(message).toContain('SHARD_002_DB_USERNAME: is required: the login for shard shard-002');
    expect(message).not.toContain('SHARD_001');
    expect(message).not.toContain('hidden');
  });

  it('names a catalog shard that is not configured', () => {
    expect(messageOf({ ...VALID, CATALOG_SHARD_ID: 'shard-009' })).toContain('CATALOG_SHARD_ID: names no configured shard (shard-001, shard-002)');
  });

  it('passes on what the sharding configuration says is wrong', () => {
    expect(messageOf({ ...VALID, SHARDING_STRATEGY: 'round_robin' })).toContain('SHARDING_STRATEGY: must be one of');
    expect(messageOf({ ...VALID, SHARDING_CONFIG_JSON: '{"shards": [' })).toContain('SHARDING_CONFIG_JSON: is not valid JSON');
  });

  describe('DATABASE_CA_BUNDLE', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ca-dms-backend-ca-'));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    it('reads every certificate of the file it names', () => {
      const file = join(dir, 'rds.pem');
      writeFileSync(file, rdsCaBundlePem());

      const settings = parseBackendEnv({ ...VALID, DATABASE_CA_BUNDLE: file });

      expect(settings.ca?.length).toBeGreaterThan(10);
      expect(settings.ca?.join('\n')).toBe(rdsCaBundlePem().trim());
    });

    it('is refused, named, when the file is missing or holds no certificate', () => {
      const empty = join(dir, 'empty.pem');
      writeFileSync(empty, 'not a certificate\n');

      expect(messageOf({ ...VALID, DATABASE_CA_BUNDLE: join(dir, 'absent.pem') })).toMatch(/DATABASE_CA_BUNDLE: cannot be read: ENOENT/);
      expect(messageOf({ ...VALID, DATABASE_CA_BUNDLE: empty })).toContain('DATABASE_CA_BUNDLE: holds no PEM certificate');
    });
  });

  it('names the credential variables the way the services stack names the secrets (shard-001 -> SHARD_001_DB_*)', () => {
    expect(shardCredentialVariables('shard-001')).toEqual({ username: 'SHARD_001_DB_USERNAME', password: 'SHARD_001_DB_PASSWORD', secretArn: 'SHARD_001_DB_SECRET_ARN' });
  });
});

describe('the demo backend server before the shards are reachable', () => {
  let server: Server;
  let base: string;
  const settings = (readOnly: boolean) => ({ ...parseBackendEnv({ ...VALID, CA_DMS_SERVICE: readOnly ? 'backend-read' : 'backend-write', DATABASE_READ_ONLY: String(readOnly) }), PORT: 0 });
  const waiting = { route: undefined, waitingFor: 'the catalog has no slot map yet' };
  let readOnlyServer: Server;
  let readOnlyBase: string;

  beforeAll(async () => {
    // Port 0: the kernel picks a free one (the environment would insist on 1024 or above).
    server = await startBackendServer(settings(false), waiting, '127.0.0.1');
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    readOnlyServer = await startBackendServer(settings(true), waiting, '127.0.0.1');
    readOnlyBase = `http://127.0.0.1:${(readOnlyServer.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await new Promise<void>((resolve) => readOnlyServer.close(() => resolve()));
  });

  it.each(['/health', '/health/readonly'])('answers %s with 200, who it is and that it is still connecting', async (path) => {
    const res = await fetch(`${base}${path}`);

    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: 'ok', service: 'backend-write', read_only: false, database: 'connecting' });
  });

  it('answers the documents API with 503, Retry-After and what it waits for', async () => {
    const res = await fetch(`${base}/api/v1/users`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });

    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('5');
    expect(res.headers.get('content-type')).toBe('application/problem+json');
    expect(await res.json()).toMatchObject({ status: 503, detail: 'the shards are not reachable yet: the catalog has no slot map yet' });
  });

  it('refuses writes on the read pool with 405, before anything else', async () => {
    const res = await fetch(`${readOnlyBase}/api/v1/documents`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });

    expect(res.status).toBe(405);
    expect(res.headers.get('allow')).toBe('GET, HEAD');
    expect((await res.json()) as unknown).toMatchObject({ detail: expect.stringContaining('read pool') as unknown });
  });

  it('answers an unknown path with a 404 problem document', async () => {
    const res = await fetch(`${base}/api/v2/documents`);

    expect(res.status).toBe(404);
    expect(res.headers.get('content-type')).toBe('application/problem+json');
    expect(await res.json()).toMatchObject({ status: 404, title: 'Not Found' });
  });

  it('allows only GET and HEAD on its health endpoints', async () => {
    const res = await fetch(`${base}/health`, { method: 'POST' });

    expect(res.status).toBe(405);
    expect(res.headers.get('allow')).toBe('GET, HEAD');
  });
});
