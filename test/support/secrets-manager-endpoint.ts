/**
 * A Secrets Manager endpoint on loopback for a process aws-sdk-client-mock cannot reach: a built
 * image run from its root filesystem (test/images). The SDK in the process is pointed at it with
 * `AWS_ENDPOINT_URL_SECRETS_MANAGER` and static credentials; it answers `GetSecretValue` (the
 * AWS JSON 1.1 protocol) with what `secretOf` says now, and records every request, so a test
 * can change a secret under the process (a rotation) and see when it is read.
 *
 * @example
 * ```ts
 * const endpoint = await startSecretsManagerEndpoint((arn) => JSON.stringify({ username, password, host }));
 * startImage(image, { env: { ...endpoint.env, SHARD_001_DB_SECRET_ARN: arn } });
 * endpoint.requests.filter((r) => r.secretId === arn).length;
 * await endpoint.stop();
 * ```
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface SecretsManagerRequest {
  readonly target: string;
  readonly secretId: string;
  /** The request's Authorization header: a signed request starts `AWS4-HMAC-SHA256`. */
  readonly authorization: string;
}

export interface SecretsManagerEndpoint {
  /** The variables that point an AWS SDK for JavaScript v3 at it, with static credentials. */
  readonly env: Readonly<Record<string, string>>;
  readonly requests: readonly SecretsManagerRequest[];
  stop(): Promise<void>;
}

/** Starts it on a free loopback port; `secretOf` gives a secret's SecretString, or undefined for none. */
export async function startSecretsManagerEndpoint(secretOf: (secretId: string) => string | undefined): Promise<SecretsManagerEndpoint> {
  const requests: SecretsManagerRequest[] = [];
  const server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => (body += chunk));
    req.on('end', () => {
      const target = String(req.headers['x-amz-target'] ?? '');
      const secretId = String((JSON.parse(body || '{}') as { SecretId?: unknown }).SecretId ?? '');
      requests.push({ target, secretId, authorization: String(req.headers.authorization ?? '') });
      const secret = target === 'secretsmanager.GetSecretValue' ? secretOf(secretId) : undefined;
      res.writeHead(secret === undefined ? 400 : 200, { 'content-type': 'application/x-amz-json-1.1' });
      res.end(
        JSON.stringify(
          secret === undefined
            ? { __type: 'ResourceNotFoundException', message: `Secrets Manager can't find the specified secret ${secretId}.` }
            : { ARN: secretId, Name: secretId.split(':').pop(), SecretString: secret, VersionId: `v${requests.length}`, VersionStages: ['AWSCURRENT'], CreatedDate: 1_700_000_000 },
        ),
      );
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as AddressInfo;
  return {
    env: { AWS_ENDPOINT_URL_SECRETS_MANAGER: `http://127.0.0.1:${port}`, AWS_ACCESS_KEY_ID: 'AKIDEXAMPLE', AWS_SECRET_ACCESS_KEY: 'not-a-real-secret-key' },
    requests,
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
