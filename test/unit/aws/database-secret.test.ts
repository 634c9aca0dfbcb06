/**
 * Database logins read from Secrets Manager (aws-sdk-client-mock): what a read returns or why it
 * failed, and that the shard pools of one shard, refused together after a rotation, share one
 * GetSecretValue.
 */
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { DatabaseSecretError, readSecret, secretLogins } from '../../../functions/adapters/aws/database-secret.js';

const sm = mockClient(SecretsManagerClient);
const client = new SecretsManagerClient({ region: 'eu-west-1' });
const arn = (shard: string) => `arn:aws:secretsmanager:eu-west-1:123456789012:secret:ca-dms-dev/${shard}/app-AbCdEf`;
const SECRET_OF = new Map([['shard-001', arn('shard-001')], ['shard-002', arn('shard-002')]]);
const secretString = (username: string) => JSON.stringify({ username, password: 'p', host: 'shard.example', port: 5432, dbname: 'ca_dms' });

beforeEach(() => sm.reset());
afterAll(() => sm.restore());

describe('readSecret', () => {
  it('names the secret and what is wrong with it', async () => {
    sm.on(GetSecretValueCommand, { SecretId: arn('shard-001') }).resolves({ SecretString: JSON.stringify({ username: 'app', host: 'h' }) });
    sm.on(GetSecretValueCommand, { SecretId: arn('shard-002') }).rejects(new Error('Secrets Manager can\'t find the specified secret.'));

    const incomplete = await readSecret(client, arn('shard-001')).catch((e: unknown) => e);
    const missing = await readSecret(client, arn('shard-002')).catch((e: unknown) => e);

    expect(incomplete).toBeInstanceOf(DatabaseSecretError);
    expect((incomplete as Error).message).toBe(`database secret ${arn('shard-001')} lacks password`);
    expect((missing as Error).message).toBe(`reading database secret ${arn('shard-002')} failed: Secrets Manager can't find the specified secret.`);
  });
});

describe('secretLogins', () => {
  it('shares one GetSecretValue among the reads of a secret that overlap, and reads again once they have ended', async () => {
    sm.on(GetSecretValueCommand).callsFake((input: { SecretId: string }) => ({ SecretString: secretString(input.SecretId === arn('shard-001') ? 'app_clone' : 'app') }));
    const loginOf = secretLogins(client, SECRET_OF);

    const together = await Promise.all([loginOf('shard-001'), loginOf('shard-001'), loginOf('shard-001'), loginOf('shard-002')]);
    const callsTogether = sm.commandCalls(GetSecretValueCommand).length;
    await loginOf('shard-001');

    expect(together.map((l) => l.username)).toEqual(['app_clone', 'app_clone', 'app_clone', 'app']);
    expect(callsTogether).toBe(2);
    expect(sm.commandCalls(GetSecretValueCommand)).toHaveLength(3);
  });

  it('shares a failed read too, and does not keep the failure for the next one', async () => {
    sm.on(GetSecretValueCommand).rejectsOnce(new Error('Rate exceeded')).resolves({ SecretString: secretString('app') });
    const loginOf = secretLogins(client, SECRET_OF);

    const failures = await Promise.all([loginOf('shard-001'), loginOf('shard-001')].map((p) => p.catch((e: unknown) => (e as Error).message)));
    const next = await loginOf('shard-001');

    expect(failures).toEqual(Array<string>(2).fill(`reading database secret ${arn('shard-001')} failed: Rate exceeded`));
    expect(next.username).toBe('app');
    expect(sm.commandCalls(GetSecretValueCommand)).toHaveLength(2);
  });

  it('refuses a shard it has no secret for, without calling Secrets Manager', async () => {
    const err = await secretLogins(client, SECRET_OF)('shard-009').catch((e: unknown) => e);

    expect(err).toBeInstanceOf(DatabaseSecretError);
    expect((err as Error).message).toBe('no secret is configured for shard shard-009');
    expect(sm.commandCalls(GetSecretValueCommand)).toHaveLength(0);
  });
});
