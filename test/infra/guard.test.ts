/**
 * cfn-guard as the app registers it (lib/guard.ts): an unacknowledged failure fails the
 * synthesis even when another failure of the same plugin is acknowledged. With the plugin as it
 * comes, CDK re-judges a plugin with an acknowledged violation by the severity of the rest, and
 * the plugin's violations carry none: the synthesis would print the failure and succeed.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { App, Stack, Validations } from 'aws-cdk-lib';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { guardValidator } from '../../lib/guard.js';
import { acknowledge } from '../../lib/nag.js';
import { SYNTH_HOOK_TIMEOUT_MS } from './support/synth.js';

const outdirs: string[] = [];
afterAll(() => {
  for (const dir of outdirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** Two queues without a dead-letter queue (CT.SQS.PR.3), the first of them acknowledged. */
interface Result {
  readonly error: unknown;
  readonly report: { pluginReports: Array<{ pluginName: string; conclusion: string; violations: Array<{ ruleName: string; violatingConstructs: Array<{ constructPath: string }> }> }> };
}

function synthTwoQueues(): Result {
  const outdir = mkdtempSync(join(tmpdir(), 'ca-dms-guard-'));
  outdirs.push(outdir);
  const app = new App({ outdir });
  const stack = new Stack(app, 'Queues');
  const accepted = new sqs.Queue(stack, 'Accepted', { encryption: sqs.QueueEncryption.SQS_MANAGED, enforceSSL: true });
  acknowledge(accepted, 'cdk-validator-cfnguard::sqs_dlq_check', 'This queue is the test’s accepted failure.');
  new sqs.Queue(stack, 'NotAccepted', { encryption: sqs.QueueEncryption.SQS_MANAGED, enforceSSL: true });
  Validations.of(app).addPlugins(guardValidator());
  let error: unknown;
  try {
    app.synth();
  } catch (e) {
    error = e;
  }
  const path = join(outdir, 'validation-report.json');
  return { error, report: existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as Result['report']) : { pluginReports: [] } };
}

// cfn-guard runs every Control Tower rule file: seconds even for two resources, so once, in a hook.
let result: Result;
beforeAll(() => {
  result = synthTwoQueues();
}, SYNTH_HOOK_TIMEOUT_MS);

describe('guardValidator', () => {
  it('fails the synthesis on a failure left unacknowledged beside an acknowledged one, naming the resource', () => {
    const { error, report } = result;
    expect(error).toBeDefined();
    const guard = report.pluginReports.find((p) => p.pluginName === 'cdk-validator-cfnguard');
    expect(guard?.conclusion).toBe('failure');
    const dlq = guard?.violations.find((v) => v.ruleName === 'sqs_dlq_check');
    expect(dlq?.violatingConstructs.map((c) => c.constructPath)).toEqual(['Queues/NotAccepted/Resource']);
  });
});
