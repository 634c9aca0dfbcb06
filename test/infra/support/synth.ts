/**
 * Synthesizes the CA-DMS app the way `bin/app.ts` does, with the fixture handlers, fixture
 * migrations and a fixture nginx build context, and cdk-nag's AwsSolutions pack and cfn-guard
 * (lib/guard.ts) registered.
 * Each test file calls it once (in `beforeAll`) and shares the result.
 */
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { App, Validations, type Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { AwsSolutionsChecks } from 'cdk-nag';
import { CaDmsStage, stageId, type CaDmsStacks } from '../../../lib/ca-dms-stage.js';
import { guardValidator } from '../../../lib/guard.js';
import { parseDeploymentConfig, type DeploymentConfig } from '../../../lib/config/deployment-config.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const FIXTURES = join(ROOT, 'test', 'infra', 'fixtures');

/**
 * How long a `beforeAll` that synthesizes may take: the app with cdk-nag and cfn-guard costs
 * about a minute of CPU, and on a 2-core machine shared with other test runs its wall time is
 * several times that. Not a performance check (bench/synth.ts is): only a bound on a hang.
 */
export const SYNTH_HOOK_TIMEOUT_MS = 600_000;

/** The fixture handlers, migrations and image build contexts the test stages are built from. */
export const FIXTURE_SOURCES = {
  entries: {
    evaluate: join(FIXTURES, 'handlers', 'evaluate.ts'),
    alarm: join(FIXTURES, 'handlers', 'alarm.ts'),
    api: join(FIXTURES, 'handlers', 'api.ts'),
    migrate: join(FIXTURES, 'handlers', 'migrate.ts'),
    moves: join(FIXTURES, 'handlers', 'moves.ts'),
  },
  migrationsDirectory: join(FIXTURES, 'migrations'),
  nginxImage: { directory: join(FIXTURES, 'nginx'), file: 'Dockerfile' },
  demoBackendImage: { directory: join(FIXTURES, 'backend'), file: 'Dockerfile' },
} as const;

/**
 * The stage `Dev` for `configInput`, built without synthesis and without bundling the functions
 * (fast): for tests that read one stack's constructs or template.
 */
export function unbundledStage(configInput: unknown): CaDmsStacks {
  const app = new App({ autoSynth: false, context: { 'aws:cdk:bundling-stacks': [] } });
  return new CaDmsStage(app, 'Dev', { config: parseDeploymentConfig(configInput), sources: FIXTURE_SOURCES }).stacks;
}

/** The recommended feature flags and defaults of `cdk.json`, as the CLI would pass them. */
export function cdkJsonContext(): Record<string, unknown> {
  return (JSON.parse(readFileSync(join(ROOT, 'cdk.json'), 'utf8')) as { context: Record<string, unknown> }).context;
}

/** One violation from the policy-validation report. */
export interface Violation {
  readonly plugin: string;
  readonly rule: string;
  readonly paths: readonly string[];
}

export interface Synthesized {
  readonly app: App;
  readonly config: DeploymentConfig;
  readonly stage: CaDmsStage;
  readonly stacks: CaDmsStacks;
  /** The app's cloud assembly (its validation report); the stage's templates are in `assembly-<Stage>/`. */
  readonly outdir: string;
  /** The synthesis error, if validation failed (the report still lists the violations). */
  readonly error: unknown;
  /** Violations of failing plugins (cdk-nag, cfn-guard, CloudFormation validation). */
  readonly violations: readonly Violation[];
  template(stack: Stack): Template;
  /** Where the synthesized template of `stack` is (in its stage's nested assembly). */
  templatePath(stack: Stack): string;
}

interface Report {
  pluginReports: Array<{
    pluginName: string;
    conclusion: string;
    violations?: Array<{ ruleName: string; violatingResources?: Array<{ constructPath?: string; resourceLogicalId?: string }> }>;
  }>;
}

/**
 * Synthesizes the app for `configInput` (a deployment configuration document). `validate: false`
 * leaves cdk-nag and cfn-guard out, for tests that only read the templates (the guard tests
 * check the same configurations with them on).
 */
export function synthesize(configInput: unknown, options: { readonly validate?: boolean } = {}): Synthesized {
  const config = parseDeploymentConfig(configInput);
  const outdir = mkdtempSync(join(tmpdir(), 'ca-dms-cdk-'));
  const app = new App({ context: cdkJsonContext(), outdir });
  const stage = new CaDmsStage(app, stageId(config.environment), {
    config,
    sources: { ...FIXTURE_SOURCES, depsLockFilePath: join(ROOT, 'package-lock.json') },
  });
  const stacks = stage.stacks;
  if (options.validate ?? true) Validations.of(app).addPlugins(new AwsSolutionsChecks(app), guardValidator());
  let error: unknown;
  try {
    app.synth();
  } catch (e) {
    error = e;
  }
  const reportPath = join(outdir, 'validation-report.json');
  const report: Report = existsSync(reportPath) ? (JSON.parse(readFileSync(reportPath, 'utf8')) as Report) : { pluginReports: [] };
  const violations = report.pluginReports
    .filter((p) => p.conclusion !== 'success')
    .flatMap((p) =>
      (p.violations ?? []).map((v) => ({
        plugin: p.pluginName,
        rule: v.ruleName,
        paths: (v.violatingResources ?? []).map((r) => r.constructPath ?? r.resourceLogicalId ?? '?'),
      })),
    );
  const templates = new Map<Stack, Template>();
  return {
    app,
    config,
    stage,
    stacks,
    outdir,
    error,
    violations,
    template(stack) {
      let t = templates.get(stack);
      if (!t) {
        // The assembly is already written: read it instead of synthesizing again.
        t = Template.fromJSON(JSON.parse(readFileSync(this.templatePath(stack), 'utf8')) as Record<string, unknown>);
        templates.set(stack, t);
      }
      return t;
    },
    templatePath(stack) {
      return join(stage.outdir, stack.templateFile);
    },
  };
}

/** Every resource of `type` in `template`, as [logicalId, resource] pairs. */
export function resourcesOf(template: Template, type: string): Array<[string, { Properties?: Record<string, unknown>; DeletionPolicy?: string; UpdateReplacePolicy?: string; DependsOn?: unknown }]> {
  return Object.entries(template.findResources(type)) as Array<[string, { Properties?: Record<string, unknown>; DeletionPolicy?: string }]>;
}
