/**
 * Synthesizes the CA-DMS app the way `bin/app.ts` does, with the fixture handlers, fixture
 * migrations and a fixture nginx build context, and cdk-nag's AwsSolutions pack and cfn-guard
 * (lib/guard.ts) registered.
 * Each configuration is synthesized once per test run and shared between the files that read it
 * (see {@link synthesize}).
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { App, Validations, type Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { AwsSolutionsChecks } from 'cdk-nag';
import { CaDmsStage, stageId, type CaDmsStacks } from '../../../lib/ca-dms-stage.js';
import { guardValidator } from '../../../lib/guard.js';
import { mergeConfig, parseDeploymentConfig, type DeploymentConfig } from '../../../lib/config/deployment-config.js';
import { FIXTURES, ROOT } from './paths.js';

export { FIXTURES, ROOT };

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
 * The domain every production synthesis of the tests is given (config/prod.json leaves it to the
 * deployer, and production refuses to synthesize without one): a Route 53 hosted zone, so the app
 * requests a DNS-validated certificate and adds an alias record. The larger of the two domain forms
 * (a `certificateArn` adds neither resource), and one form for every file: the production app is
 * synthesized and validated once per run, not once per form (a full synthesis costs about a minute
 * of CPU). production.test.ts checks the `certificateArn` form's listener on a cheap synthesis.
 */
export const PRODUCTION_DOMAIN = { domainName: 'dms.example.com', hostedZone: { id: 'Z0123456789ABCDEFGHIJ', name: 'example.com' } } as const;

/** A `config/*.json` document ready to synthesize: a production one gets {@link PRODUCTION_DOMAIN}. */
export function deployable(raw: unknown): unknown {
  const production = typeof raw === 'object' && raw !== null && (raw as { production?: unknown }).production === true;
  return production ? mergeConfig(raw, { domain: PRODUCTION_DOMAIN }) : raw;
}

/** What the synthesized stages are built from: the fixtures, bundling anchored at the repository's lock file. */
const STAGE_SOURCES = { ...FIXTURE_SOURCES, depsLockFilePath: join(ROOT, 'package-lock.json') };

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
  /**
   * The app's cloud assembly (its validation report); the stage's templates are in `assembly-<Stage>/`.
   * Shared by every file of the run that synthesizes the same configuration: read it, never change or remove it.
   */
  readonly outdir: string;
  /** The synthesis error, if validation failed (the report still lists the violations). */
  readonly error: unknown;
  /** Violations of failing plugins (cdk-nag, cfn-guard, CloudFormation validation). */
  readonly violations: readonly Violation[];
  template(stack: Stack): Template;
  /** The stage's nested assembly in {@link outdir} (`stage.outdir` is the caller's tree's own, unbundled). */
  readonly stageOutdir: string;
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

/** The environment variable naming the directory the syntheses of one test run are shared in. */
export const SYNTH_CACHE_ENV = 'CA_DMS_TEST_SYNTH_CACHE';

/** How a shared synthesis ended, as its synthesizing process records it beside the assembly. */
interface Outcome {
  /** The message of the synthesis error (failed validation), if any. */
  readonly error?: string;
  readonly violations: readonly Violation[];
  /** Set when the synthesizing process failed before `app.synth()` could report anything. */
  readonly crashed?: string;
}

let processCacheRoot: string | undefined;

/**
 * Where this run's syntheses are shared: the directory test/infra/support/synth-cache-setup.ts
 * made for the whole run (one per run, so no synthesis can outlive the sources it was made
 * from), or, when a file runs without that setup, one of this process's own.
 */
function cacheRoot(): string {
  const shared = process.env[SYNTH_CACHE_ENV];
  if (shared) return shared;
  if (!processCacheRoot) {
    const root = mkdtempSync(join(tmpdir(), 'ca-dms-synth-'));
    process.once('exit', () => rmSync(root, { recursive: true, force: true }));
    processCacheRoot = root;
  }
  return processCacheRoot;
}

const pause = new Int32Array(new SharedArrayBuffer(4));
/** Blocks this thread for `ms` (synthesize is synchronous: test files call it while collecting). */
const sleepSync = (ms: number): void => void Atomics.wait(pause, 0, 0, ms);

function readOutcome(dir: string): Outcome | undefined {
  try {
    return JSON.parse(readFileSync(join(dir, 'outcome.json'), 'utf8')) as Outcome;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

/** Whether process `pid` still runs (EPERM: it runs as another user). */
function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Synthesizes `config` with cdk-nag and cfn-guard into `outdir`, bundling every function. */
function synthesizeInto(config: DeploymentConfig, outdir: string): Outcome {
  const app = new App({ context: cdkJsonContext(), outdir });
  new CaDmsStage(app, stageId(config.environment), { config, sources: STAGE_SOURCES });
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app), guardValidator());
  let error: string | undefined;
  try {
    app.synth();
  } catch (e) {
    error = e instanceof Error ? e.message : String(e);
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
  return { ...(error === undefined ? {} : { error }), violations };
}

/**
 * The outcome of the synthesis of `config` in `dir`: synthesized here when no other test process
 * of this run has claimed it, else waited for. The claim is a directory renamed into place
 * (atomic: exactly one process wins it, as nothing else creates `dir`) holding the winner's pid;
 * the outcome is written last,
 * through a rename, so a reader never sees half of it.
 */
function sharedOutcome(config: DeploymentConfig, dir: string): Outcome {
  const started = Date.now();
  for (;;) {
    const done = readOutcome(dir);
    if (done) {
      if (done.crashed !== undefined) throw new Error(`the shared synthesis in ${dir} failed in the process that ran it: ${done.crashed}`);
      return done;
    }
    const claim = mkdtempSync(`${dir}.claim-`);
    writeFileSync(join(claim, 'owner'), String(process.pid));
    let won = false;
    try {
      renameSync(claim, dir);
      won = true;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      rmSync(claim, { recursive: true, force: true });
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw error;
    }
    if (won) {
      let outcome: Outcome;
      let thrown: unknown;
      try {
        outcome = synthesizeInto(config, join(dir, 'cdk.out'));
      } catch (error) {
        // Rethrown here as it is (a DeploymentConfigError stays one); the others get its text.
        thrown = error;
        outcome = { violations: [], crashed: error instanceof Error ? (error.stack ?? error.message) : String(error) };
      }
      writeFileSync(join(dir, 'outcome.json.tmp'), JSON.stringify(outcome));
      renameSync(join(dir, 'outcome.json.tmp'), join(dir, 'outcome.json'));
      if (thrown !== undefined) throw thrown;
      return outcome;
    }
    const owner = Number(readFileSync(join(dir, 'owner'), 'utf8'));
    if (readOutcome(dir) === undefined && !running(owner)) {
      throw new Error(`the shared synthesis in ${dir} has no outcome and its process (pid ${owner}) is gone: it was killed while synthesizing`);
    }
    if (Date.now() - started > SYNTH_HOOK_TIMEOUT_MS) throw new Error(`the shared synthesis in ${dir} (pid ${owner}) took longer than ${SYNTH_HOOK_TIMEOUT_MS} ms`);
    sleepSync(100);
  }
}

/**
 * The app for `configInput` (a deployment configuration document), synthesized with cdk-nag and
 * cfn-guard registered.
 *
 * Each distinct configuration is synthesized (every function bundled) once per test run, by
 * whichever test process asks first, into a directory of the run (see {@link SYNTH_CACHE_ENV});
 * every file that asks for it reads that cloud assembly. The construct tree returned (`app`,
 * `stage`, `stacks`) is the caller's own, built and synthesized the same way but without
 * bundling or validation (fast): construction is deterministic, so its logical IDs, names,
 * metadata and dependencies are those of the shared synthesis, while templates, assets and the
 * validation report are read from the shared assembly (`outdir`, `stageOutdir`).
 */
export function synthesize(configInput: unknown): Synthesized {
  const config = parseDeploymentConfig(configInput);
  const key = createHash('sha256').update(JSON.stringify(config)).digest('hex').slice(0, 16);
  const dir = join(cacheRoot(), key);
  // First: an App creates its output directory when constructed, and the claim needs `dir` absent.
  const outcome = sharedOutcome(config, dir);
  const outdir = join(dir, 'cdk.out');
  const tree = buildTree(config);
  const stageOutdir = join(outdir, relative(tree.app.outdir, tree.stage.outdir));
  return {
    ...tree,
    outdir,
    error: outcome.error === undefined ? undefined : new Error(outcome.error),
    violations: outcome.violations,
    ...templatesIn(stageOutdir),
  };
}

/** What {@link unvalidatedSynthesis} gives: a synthesis without its validation report. */
export type UnvalidatedSynthesis = Pick<Synthesized, 'app' | 'config' | 'stage' | 'stacks' | 'template' | 'stageOutdir' | 'templatePath'>;

/**
 * The app for `configInput` synthesized the cheap way only (no bundling, no CloudFormation
 * schema validation, no cdk-nag or cfn-guard: about a second where {@link synthesize} costs a
 * shared full synthesis), for a test that reads templates and asset manifests and asserts
 * nothing about validation. Its templates and manifests are the tree's own (`stageOutdir`);
 * the image assets are staged as in the full synthesis (bundling is skipped for the
 * functions' code only).
 */
export function unvalidatedSynthesis(configInput: unknown): UnvalidatedSynthesis {
  const tree = buildTree(parseDeploymentConfig(configInput));
  return { ...tree, ...templatesIn(tree.stage.outdir) };
}

/**
 * The caller's construct tree for `config`, synthesized too (what synthesis adds to it, such as
 * the dependencies between stacks, is part of what the tests read), but cheaply: no bundling, no
 * CloudFormation schema validation, no cdk-nag, into a directory of its own.
 */
function buildTree(config: DeploymentConfig): Pick<Synthesized, 'app' | 'config' | 'stage' | 'stacks'> {
  const app = new App({
    context: { ...cdkJsonContext(), 'aws:cdk:bundling-stacks': [] },
    outdir: mkdtempSync(join(cacheRoot(), 'tree-')),
    autoSynth: false,
    builtinCloudFormationValidation: false,
  });
  const stage = new CaDmsStage(app, stageId(config.environment), { config, sources: STAGE_SOURCES });
  app.synth();
  return { app, config, stage, stacks: stage.stacks };
}

/** Reading the templates of the stage's nested assembly in `stageOutdir` (each parsed once). */
function templatesIn(stageOutdir: string): Pick<Synthesized, 'template' | 'stageOutdir' | 'templatePath'> {
  const templates = new Map<Stack, Template>();
  const templatePath = (stack: Stack): string => join(stageOutdir, stack.templateFile);
  return {
    stageOutdir,
    templatePath,
    template(stack) {
      let t = templates.get(stack);
      if (!t) {
        t = Template.fromJSON(JSON.parse(readFileSync(templatePath(stack), 'utf8')) as Record<string, unknown>);
        templates.set(stack, t);
      }
      return t;
    },
  };
}

/** Every resource of `type` in `template`, as [logicalId, resource] pairs. */
export function resourcesOf(template: Template, type: string): Array<[string, { Properties?: Record<string, unknown>; DeletionPolicy?: string; UpdateReplacePolicy?: string; DependsOn?: unknown }]> {
  return Object.entries(template.findResources(type)) as Array<[string, { Properties?: Record<string, unknown>; DeletionPolicy?: string }]>;
}
