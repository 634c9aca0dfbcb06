/**
 * `services.<name>.databaseAccess`: only services that connect to the shards get their login
 * secrets' grants and the sharding settings (least privilege for a frontend of your own).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { CfnElement } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { describe, expect, it } from 'vitest';
import { SERVICE_NAMES, type ServiceName } from '../../lib/config/deployment-config.js';
import { APP_CONTAINER } from '../../lib/services/sidecar-service.js';
import { problemsOf } from './support/config-issues.js';
import { resourcesOf, ROOT, SYNTH_HOOK_TIMEOUT_MS, unbundledStage } from './support/synth.js';

type Json = Record<string, unknown>;

const STATIC_FRONTEND = { image: { kind: 'registry', uri: 'public.ecr.aws/nginx/nginx:1.27' }, databaseAccess: false };

describe('services.<name>.databaseAccess', () => {
  it('leaves a service without database access out of every shard login grant and without the shard settings', () => {
    const stacks = unbundledStage({ services: { frontend: STATIC_FRONTEND } });
    const template = Template.fromStack(stacks.services);
    const logicalId = (construct: { node: { defaultChild?: unknown } }): string => stacks.services.getLogicalId(construct.node.defaultChild as CfnElement);
    const taskRoleId = (name: ServiceName): string => logicalId(stacks.services.services[name].taskDefinition.taskRole);
    const secretGrants = new Map<string, number>();
    for (const [, policy] of resourcesOf(template, 'AWS::IAM::Policy')) {
      const statements = (policy.Properties?.['PolicyDocument'] as { Statement: Array<{ Action: string | string[] }> }).Statement;
      const grants = statements.filter((st) => [st.Action].flat().includes('secretsmanager:GetSecretValue')).length;
      for (const role of policy.Properties?.['Roles'] as Array<{ Ref: string }>) secretGrants.set(role.Ref, (secretGrants.get(role.Ref) ?? 0) + grants);
    }
    const environmentOf = (name: ServiceName): string[] => {
      const task = (template.toJSON() as { Resources: Record<string, { Properties: { ContainerDefinitions: Json[] } }> }).Resources[logicalId(stacks.services.services[name].taskDefinition)];
      if (!task) throw new Error(`no task definition of ${name}`);
      const app = task.Properties.ContainerDefinitions.find((c) => c['Name'] === APP_CONTAINER) as { Environment: Array<{ Name: string }> };
      return app.Environment.map((e) => e.Name);
    };

    expect(secretGrants.get(taskRoleId('frontend')) ?? 0).toBe(0);
    expect(environmentOf('frontend').filter((n) => /SHARD|CATALOG|DATABASE/.test(n))).toEqual([]);
    for (const name of SERVICE_NAMES.filter((n) => n !== 'frontend')) {
      expect(secretGrants.get(taskRoleId(name)), name).toBeGreaterThan(0);
      expect(environmentOf(name), name).toEqual(expect.arrayContaining(['SHARDING_CONFIG_JSON', 'SHARD_001_DB_SECRET_ARN', 'CATALOG_SHARD_ID']));
    }
  }, SYNTH_HOOK_TIMEOUT_MS);

  it("sizes each task's pools (DATABASE_POOL_SIZE) so that the services at their maximum during a deployment fit the instances' max_connections", () => {
    const dev = JSON.parse(readFileSync(join(ROOT, 'config/dev.json'), 'utf8')) as Json;
    const stacks = unbundledStage(dev);
    const template = Template.fromStack(stacks.services);
    const logicalId = (construct: { node: { defaultChild?: unknown } }): string => stacks.services.getLogicalId(construct.node.defaultChild as CfnElement);
    for (const name of SERVICE_NAMES) {
      const task = (template.toJSON() as { Resources: Record<string, { Properties: { ContainerDefinitions: Json[] } }> }).Resources[logicalId(stacks.services.services[name].taskDefinition)];
      const app = task?.Properties.ContainerDefinitions.find((c) => c['Name'] === APP_CONTAINER) as { Environment: Array<{ Name: string; Value: string }> };
      // dev: 30 tasks at max_instances, 60 during a deployment, on t4g.medium (394 connections estimated, 413 measured).
      expect(app.Environment.find((e) => e.Name === 'DATABASE_POOL_SIZE')?.Value, name).toBe('3');
    }
    expect(() => unbundledStage({ ...dev, database: { ...(dev['database'] as Json), instanceClass: 't4g.micro' } })).toThrow(
      expect.objectContaining({ name: 'DeploymentConfigError', message: expect.stringMatching(/database\.instanceClass.*60 tasks .* cannot hold even one connection each within the 98 connections t4g\.micro allows/s) }),
    );
  }, SYNTH_HOOK_TIMEOUT_MS);

  it('refuses the demo backend without database access, naming the path, and takes it for an image of your own', () => {
    expect(problemsOf({ services: { worker: { databaseAccess: false } } })).toEqual([
      expect.objectContaining({ path: 'services.worker.databaseAccess', message: expect.stringMatching(/demo backend .* does not start without the shards/) }),
    ]);
    expect(problemsOf({ services: { frontend: STATIC_FRONTEND } })).toEqual([]);
  });
});
