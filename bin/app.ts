#!/usr/bin/env node
/**
 * The CDK app: `npx cdk synth` / `npx cdk deploy 'Dev/*'` (cdk.json runs this file with tsx).
 * Picks the environment with `-c ca-dms:environment=prod` (default `dev`), reads
 * `config/<env>.json`, lays `-c ca-dms:config='{...}'` over it, fails with every offending
 * path named when the result is invalid, and adds that environment as one `Stage` (`Dev`,
 * `Prod`) holding its five stacks. One environment per synthesis: the overrides and the scaling
 * variables then apply to exactly one environment, and prod's required domain never blocks a
 * dev synthesis. cdk-nag's AwsSolutions pack and cfn-guard with the AWS
 * Control Tower rules (lib/guard.ts) check every stack, and any finding not acknowledged fails
 * the synthesis; `CDK_VALIDATION=true` adds CDK's CloudFormation schema validation.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { stageBackendContext } from '../containers/backend/context.js';
import { stageNginxContext } from '../containers/nginx/context.js';
import { CaDmsStage, stageId } from '../lib/ca-dms-stage.js';
import { guardValidator } from '../lib/guard.js';
import { DeploymentConfigError, type DeploymentConfig } from '../lib/config/deployment-config.js';
import { loadDeploymentConfig } from '../lib/config/load-config.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

function main(): number {
  // CDK's built-in CloudFormation schema validation (a WebAssembly engine) costs more than
  // the rest of the synthesis together, pushing it past the 30 s goal on a shared 2-core
  // machine. The infra tests run it on every environment file; here it is opt-in with
  // CDK_VALIDATION=true. cdk-nag and cfn-guard always run.
  // No synthesis on exit: main() synthesizes once, and a configuration refused half-way through
  // building the stages must not be synthesized anyway.
  const app = new App({ autoSynth: false, builtinCloudFormationValidation: process.env['CDK_VALIDATION'] === 'true' });
  let config;
  try {
    config = loadDeploymentConfig({ configDir: join(root, 'config'), context: (key) => app.node.tryGetContext(key), env: process.env });
  } catch (error) {
    if (error instanceof DeploymentConfigError) {
      console.error(error.message);
      return 1;
    }
    throw error;
  }
  const staging = mkdtempSync(join(tmpdir(), 'ca-dms-image-contexts-'));
  try {
    synthesize(app, config, staging);
  } catch (error) {
    // A configuration the stacks find too large for AWS (DataStack's shard count) is reported
    // like any invalid configuration: the path and what fits, no stack trace.
    if (error instanceof DeploymentConfigError) {
      console.error(error.message);
      return 1;
    }
    throw error;
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
  return 0;
}

/** Adds the environment's stage with this repository's sources, image contexts staged under `staging`. */
function synthesize(app: App, config: DeploymentConfig, staging: string): void {
  new CaDmsStage(app, stageId(config.environment), {
    config,
    sources: {
      entries: {
        evaluate: join(root, 'functions/handlers/evaluate.ts'),
        alarm: join(root, 'functions/handlers/alarm.ts'),
        api: join(root, 'functions/handlers/api.ts'),
        migrate: join(root, 'functions/handlers/migrate.ts'),
        moves: join(root, 'functions/handlers/moves.ts'),
      },
      migrationsDirectory: join(root, 'functions/adapters/postgres/migrations'),
      // The images' build contexts are staged (their code bundled here, offline, with no
      // Docker daemon); CDK copies each into the cloud assembly as an image asset.
      nginxImage: { directory: stageNginxContext(join(staging, 'nginx')), file: 'Dockerfile' },
      demoBackendImage: { directory: stageBackendContext(join(staging, 'backend')), file: 'Dockerfile' },
      depsLockFilePath: join(root, 'package-lock.json'),
    },
    env: {
      region: config.region,
      // The account comes from the configuration or the CLI's credentials; without either the
      // stacks stay account-agnostic, which is what lets `cdk synth` run with no credentials.
      ...(config.account ?? process.env['CDK_DEFAULT_ACCOUNT'] ? { account: config.account ?? process.env['CDK_DEFAULT_ACCOUNT'] } : {}),
    },
  });
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app), guardValidator());
  app.synth();
}

process.exitCode = main();
