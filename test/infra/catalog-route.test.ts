/**
 * How each control-plane function reaches the catalog (the first shard's primary database).
 *
 * The moves worker holds a move's fence to its budget on the client: at the budget's end it
 * cancels the flip's running catalog statement with a PostgreSQL protocol CancelRequest, sent on
 * a new TCP connection to the host and port of the catalog connection
 * (functions/adapters/postgres/deadline.ts, cancelStatement; move-port.ts, flip). RDS Proxy does
 * not forward it: "For PostgreSQL, RDS Proxy doesn't currently support canceling a query from a
 * client by issuing a CancelRequest"
 * (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-proxy.html#rds-proxy.limits).
 * Through the proxy, two lock waits of the flip added up again and the fence stayed shut until
 * the connection was dropped (budget + 5.25 s), or until the next run when the flip may have been
 * sent. So the moves worker reaches the catalog at the primary's own endpoint, the host its
 * control-login secret names (the secret is attached to the primary); the other functions keep
 * the proxy.
 */
import type { CfnElement, Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { CaDmsStacks } from '../../lib/ca-dms-stage.js';
import { resourcesOf, ROOT, SYNTH_HOOK_TIMEOUT_MS, unbundledStage } from './support/synth.js';

type Json = Record<string, unknown>;

let stacks: CaDmsStacks;
let controlPlane: Template;
let data: Template;

const logicalId = (stack: Stack, construct: { node: { defaultChild?: unknown } }): string => stack.getLogicalId(construct.node.defaultChild as CfnElement);

beforeAll(() => {
  stacks = unbundledStage(JSON.parse(readFileSync(join(ROOT, 'config/dev.json'), 'utf8')) as Json);
  controlPlane = Template.fromStack(stacks.controlPlane);
  data = Template.fromStack(stacks.data);
}, SYNTH_HOOK_TIMEOUT_MS);

function variablesOf(name: 'evaluate' | 'alarm' | 'api' | 'moves'): Json {
  const id = logicalId(stacks.controlPlane, stacks.controlPlane.controlPlane[name].function);
  const fn = (controlPlane.toJSON() as { Resources: Record<string, { Properties: { Environment: { Variables: Json } } }> }).Resources[id];
  if (!fn) throw new Error(`no function ${name} (${id}) in the control-plane template`);
  return fn.Properties.Environment.Variables;
}

describe('the catalog route of the control-plane functions', () => {
  it("sends the moves worker to the catalog primary's own endpoint, where its CancelRequest lands, not to the RDS Proxy, which does not support one", () => {
    const catalog = stacks.data.shards[0];
    if (!catalog) throw new Error('the first shard hosts the catalog');
    const proxyEndpoint = `${logicalId(stacks.data, catalog.proxy)}Endpoint`;
    const moves = variablesOf('moves');

    // No host override: the pool takes the host from the control login's secret.
    expect(JSON.stringify(moves)).not.toContain(proxyEndpoint);
    expect(moves['CATALOG_DB_HOST']).toBeUndefined();
    expect(JSON.stringify(moves['CATALOG_DB_SECRET_ARN'])).toContain('Shard001ControlSecretAttachment');
    // ...which is attached to the catalog's primary: its host is the primary's endpoint.
    const attachments = resourcesOf(data, 'AWS::SecretsManager::SecretTargetAttachment').filter(([id]) => id.startsWith('Shard001ControlSecretAttachment'));
    expect(attachments).toHaveLength(1);
    expect(attachments[0]?.[1].Properties).toMatchObject({ TargetType: 'AWS::RDS::DBInstance', TargetId: { Ref: logicalId(stacks.data, catalog.primary) } });
  });

  it("admits the moves worker's security group at the catalog primary itself, on the port of its queries and of its cancel requests", () => {
    const catalog = stacks.data.shards[0];
    if (!catalog) throw new Error('the first shard hosts the catalog');
    const primarySg = logicalId(stacks.data, catalog.securityGroup);
    const functionsSg = logicalId(stacks.network, stacks.network.network.functionsSecurityGroup);
    const movesSgs = JSON.stringify(((controlPlane.toJSON() as { Resources: Record<string, { Properties: Json }> }).Resources[logicalId(stacks.controlPlane, stacks.controlPlane.controlPlane.moves.function)]?.Properties['VpcConfig'] as Json)['SecurityGroupIds']);
    expect(movesSgs).toContain(functionsSg);
    const admitted = resourcesOf(data, 'AWS::EC2::SecurityGroupIngress').filter(
      ([, r]) => JSON.stringify(r.Properties?.['GroupId']).includes(primarySg) && JSON.stringify(r.Properties?.['SourceSecurityGroupId']).includes(functionsSg),
    );
    expect(admitted.map(([, r]) => [r.Properties?.['IpProtocol'], r.Properties?.['FromPort'], r.Properties?.['ToPort']])).toEqual([['tcp', 5432, 5432]]);
  });

  it('keeps the evaluator, the alarm function and the API on the proxy (none of them cancels a catalog statement)', () => {
    const catalog = stacks.data.shards[0];
    if (!catalog) throw new Error('the first shard hosts the catalog');
    const proxyEndpoint = `${logicalId(stacks.data, catalog.proxy)}Endpoint`;
    for (const name of ['evaluate', 'alarm', 'api'] as const) expect(JSON.stringify(variablesOf(name)['CATALOG_DB_HOST']), name).toContain(proxyEndpoint);
  });
});
