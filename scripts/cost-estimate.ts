/**
 * What a deployment costs per month at list prices, read from the synthesized CloudFormation
 * templates (so it follows whatever the stacks create, not what a README once said): every
 * resource that bills by the hour or the month is counted and priced; what bills by use (Lambda,
 * API Gateway, load balancer capacity units, log ingestion, NAT data) is listed with its rate and,
 * where the templates say how often it runs (EventBridge schedules), estimated.
 *
 * The rates live in a JSON file beside this script (`prices-us-east-1.json`), each with the page
 * it was read from and the date; a rate the file lacks can be given with `--rate`.
 *
 * @example
 * ```sh
 * npx cdk synth --quiet -o /tmp/cdk-dev                       # or npm run synth (cdk.out)
 * npx tsx scripts/cost-estimate.ts --cdk-out /tmp/cdk-dev
 * npx tsx scripts/cost-estimate.ts --cdk-out /tmp/cdk-prod --rate rdsInstanceHour.db.r7g.large=0.25
 * ```
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { z } from 'zod';

const money = z.number().nonnegative();
const rate = z.object({ usd: money.nullable(), source: z.string().min(1), unconfirmed: z.boolean().optional() });
const byArch = <K extends string>(keys: readonly [K, K]) =>
  z.object({ [keys[0]]: money, [keys[1]]: money, source: z.string().min(1) } as Record<K | 'source', z.ZodType>) as unknown as z.ZodType<Record<K, number> & { source: string }>;

export const priceFileSchema = z.object({
  region: z.string(),
  currency: z.literal('USD'),
  retrieved: z.string().regex(/^\d{4}-\d{2}-\d{2}$/),
  note: z.string(),
  hoursPerMonth: z.number().positive(),
  rates: z.object({
    rdsInstanceHour: z.record(z.string(), rate.extend({ vcpus: z.number().int().positive() })),
    rdsMultiAzFactor: rate,
    rdsStorageGbMonth: rate,
    rdsProxyVcpuHour: rate,
    fargateVcpuHour: byArch(['X86_64', 'ARM64']),
    fargateGbHour: byArch(['X86_64', 'ARM64']),
    albHour: rate,
    albLcuHour: rate,
    natGatewayHour: rate,
    natGatewayGb: rate,
    publicIpv4Hour: rate,
    interfaceEndpointAzHour: rate,
    lambdaRequestMillion: rate,
    lambdaGbSecond: byArch(['x86_64', 'arm64']),
    apiGatewayRestMillion: rate,
    cloudwatchAlarmMetricMonth: rate,
    cloudwatchDashboardMonth: rate,
    cloudwatchLogsIngestGb: rate,
    secretMonth: rate,
    kmsKeyMonth: rate,
  }),
});
export type PriceFile = z.infer<typeof priceFileSchema>;

type Json = Record<string, unknown>;
interface Resource {
  readonly Type: string;
  readonly Properties?: Json;
}
export type Templates = ReadonlyArray<{ readonly name: string; readonly resources: Readonly<Record<string, Resource>> }>;

/** One line of the estimate. `monthly` is undefined when the rate is unknown. */
export interface Line {
  readonly item: string;
  readonly count: number;
  readonly detail: string;
  readonly monthly: number | undefined;
  /** The rate is not confirmed by a stored price page, or absent. */
  readonly flag?: 'unconfirmed' | 'unpriced';
}

export interface Estimate {
  /** Resources billed whether or not anything uses them. */
  readonly fixed: readonly Line[];
  /** Billed by use: the rate, and an estimate where the templates say how often. */
  readonly usage: readonly Line[];
  readonly fixedTotal: number;
  readonly unpriced: readonly string[];
}

export interface EstimateOptions {
  /** Assumed duration of one scheduled Lambda invocation, in seconds. */
  readonly lambdaSeconds: number;
}

const refTo = (value: unknown): string | undefined => {
  const v = value as { Ref?: unknown; 'Fn::GetAtt'?: unknown[] } | undefined;
  if (typeof v?.Ref === 'string') return v.Ref;
  if (Array.isArray(v?.['Fn::GetAtt']) && typeof v['Fn::GetAtt'][0] === 'string') return v['Fn::GetAtt'][0];
  return undefined;
};
const mentions = (value: unknown, logicalId: string): boolean => JSON.stringify(value ?? null).includes(`"${logicalId}"`);
const num = (value: unknown, fallback: number): number => (value === undefined || value === null || Number.isNaN(Number(value)) ? fallback : Number(value));

/** Minutes between runs of a `rate(...)` or `cron(...)` expression (cron counted as hourly or finer is not parsed: undefined). */
function minutesOf(expression: unknown): number | undefined {
  const m = typeof expression === 'string' ? /^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$/.exec(expression) : null;
  if (!m) return undefined;
  const n = Number(m[1]);
  return m[2]?.startsWith('minute') ? n : m[2]?.startsWith('hour') ? n * 60 : n * 1440;
}

/** Prices every billable resource of `templates`. */
export function estimate(templates: Templates, prices: PriceFile, options: EstimateOptions): Estimate {
  const r = prices.rates;
  const H = prices.hoursPerMonth;
  const all = templates.flatMap((t) => Object.entries(t.resources).map(([id, res]) => ({ id, ...res, props: res.Properties ?? {} })));
  const ofType = (type: string) => all.filter((x) => x.Type === type);
  const byId = new Map(all.map((x) => [x.id, x]));
  const fixed: Line[] = [];
  const usage: Line[] = [];
  const unpriced = new Set<string>();
  const flagOf = (x: { unconfirmed?: boolean | undefined; usd: number | null }): Line['flag'] => (x.usd === null ? 'unpriced' : x.unconfirmed ? 'unconfirmed' : undefined);
  const add = (lines: Line[], line: Line) => {
    if (line.count > 0) lines.push(line);
  };

  // RDS instances, grouped by class, role and Multi-AZ; a replica's storage is its source's.
  const instances = ofType('AWS::RDS::DBInstance');
  const groups = new Map<string, { count: number; cls: string; multiAz: boolean; replica: boolean; storage: number }>();
  for (const db of instances) {
    const cls = String(db.props['DBInstanceClass']);
    const replica = db.props['SourceDBInstanceIdentifier'] !== undefined;
    const source = replica ? instances.find((p) => mentions(db.props['SourceDBInstanceIdentifier'], p.id)) : undefined;
    const storage = num(db.props['AllocatedStorage'] ?? source?.props['AllocatedStorage'], 20);
    const multiAz = db.props['MultiAZ'] === true || db.props['MultiAZ'] === 'true';
    const key = `${cls}|${multiAz}|${replica}|${storage}`;
    const g = groups.get(key) ?? { count: 0, cls, multiAz, replica, storage };
    g.count += 1;
    groups.set(key, g);
  }
  for (const g of groups.values()) {
    const price = r.rdsInstanceHour[g.cls];
    const factor = g.multiAz ? (r.rdsMultiAzFactor.usd ?? 2) : 1;
    const hourly = price?.usd ?? null;
    if (hourly === null) unpriced.add(`rdsInstanceHour.${g.cls}`);
    add(fixed, {
      item: `RDS PostgreSQL ${g.replica ? 'read replica' : 'primary'} ${g.cls}${g.multiAz ? ' Multi-AZ' : ''}`,
      count: g.count,
      detail: `${hourly === null ? '?' : `$${hourly}`}/h${g.multiAz ? ` x ${factor}` : ''} x ${H} h`,
      monthly: hourly === null ? undefined : g.count * hourly * factor * H,
      ...(price ? (flagOf(price) ? { flag: flagOf(price) } : {}) : { flag: 'unpriced' }),
    });
    add(fixed, {
      item: `RDS gp3 storage (${g.replica ? 'replica' : 'primary'}${g.multiAz ? ', Multi-AZ' : ''})`,
      count: g.count,
      detail: `${g.storage} GB x $${r.rdsStorageGbMonth.usd}/GB-month${g.multiAz ? ` x ${factor}` : ''} (allocated; autoscaling may grow it)`,
      monthly: g.count * g.storage * (r.rdsStorageGbMonth.usd ?? 0) * factor,
    });
  }

  // RDS Proxy: per vCPU of the instance it fronts, at least 2.
  const proxies = ofType('AWS::RDS::DBProxy');
  let proxyVcpus = 0;
  for (const proxy of proxies) {
    const group = ofType('AWS::RDS::DBProxyTargetGroup').find((g) => refTo(g.props['DBProxyName']) === proxy.id);
    const targets = (group?.props['DBInstanceIdentifiers'] as unknown[] | undefined) ?? [];
    const vcpus = targets.reduce<number>((sum, t) => sum + (r.rdsInstanceHour[String(byId.get(refTo(t) ?? '')?.props['DBInstanceClass'])]?.vcpus ?? 2), 0);
    proxyVcpus += Math.max(2, vcpus);
  }
  add(fixed, {
    item: 'RDS Proxy',
    count: proxies.length,
    detail: `${proxyVcpus} vCPUs of the instances behind them x $${r.rdsProxyVcpuHour.usd}/vCPU-h x ${H} h`,
    monthly: proxyVcpus * (r.rdsProxyVcpuHour.usd ?? 0) * H,
    ...(flagOf(r.rdsProxyVcpuHour) ? { flag: flagOf(r.rdsProxyVcpuHour) } : {}),
  });

  // Fargate: each service at its scalable target's minimum (the controller scales from there).
  for (const svc of ofType('AWS::ECS::Service')) {
    const task = byId.get(refTo(svc.props['TaskDefinition']) ?? '');
    const target = ofType('AWS::ApplicationAutoScaling::ScalableTarget').find((t) => mentions(t.props['ResourceId'], svc.id));
    const count = num(target?.props['MinCapacity'] ?? svc.props['DesiredCount'], 1);
    const arch = (task?.props['RuntimePlatform'] as { CpuArchitecture?: string } | undefined)?.CpuArchitecture === 'ARM64' ? 'ARM64' : 'X86_64';
    const vcpu = num(task?.props['Cpu'], 256) / 1024;
    const gb = num(task?.props['Memory'], 512) / 1024;
    add(fixed, {
      item: `Fargate ${svc.id.replace(/Service[0-9A-F]{8}$/, '')} (${arch === 'ARM64' ? 'arm64' : 'x86'})`,
      count,
      detail: `${count} task${count === 1 ? "" : "s"} (minimum) x (${vcpu} vCPU x $${r.fargateVcpuHour[arch]} + ${gb} GB x $${r.fargateGbHour[arch]}) x ${H} h`,
      monthly: count * (vcpu * r.fargateVcpuHour[arch] + gb * r.fargateGbHour[arch]) * H,
    });
  }

  const albs = ofType('AWS::ElasticLoadBalancingV2::LoadBalancer').filter((lb) => (lb.props['Type'] ?? 'application') === 'application');
  add(fixed, { item: 'Application Load Balancer (hours)', count: albs.length, detail: `$${r.albHour.usd}/h x ${H} h`, monthly: albs.length * (r.albHour.usd ?? 0) * H });
  // Public IPv4: an internet-facing load balancer holds one per subnet; every Elastic IP (the NAT gateways') one.
  const albIps = albs.filter((lb) => lb.props['Scheme'] !== 'internal').reduce((n, lb) => n + ((lb.props['Subnets'] as unknown[] | undefined)?.length ?? (lb.props['SubnetMappings'] as unknown[] | undefined)?.length ?? 2), 0);
  const ips = albIps + ofType('AWS::EC2::EIP').length;
  add(fixed, { item: 'Public IPv4 addresses', count: ips, detail: `${albIps} of the load balancer + ${ips - albIps} Elastic IPs x $${r.publicIpv4Hour.usd}/h x ${H} h`, monthly: ips * (r.publicIpv4Hour.usd ?? 0) * H });
  const nats = ofType('AWS::EC2::NatGateway').length;
  add(fixed, { item: 'NAT gateways (hours)', count: nats, detail: `$${r.natGatewayHour.usd}/h x ${H} h`, monthly: nats * (r.natGatewayHour.usd ?? 0) * H });
  const endpointAzs = ofType('AWS::EC2::VPCEndpoint')
    .filter((e) => e.props['VpcEndpointType'] === 'Interface')
    .reduce((n, e) => n + ((e.props['SubnetIds'] as unknown[] | undefined)?.length ?? 1), 0);
  add(fixed, {
    item: 'VPC interface endpoints',
    count: ofType('AWS::EC2::VPCEndpoint').filter((e) => e.props['VpcEndpointType'] === 'Interface').length,
    detail: `${endpointAzs} endpoint-AZs x $${r.interfaceEndpointAzHour.usd}/h x ${H} h (the S3 gateway endpoint is free)`,
    monthly: endpointAzs * (r.interfaceEndpointAzHour.usd ?? 0) * H,
    ...(flagOf(r.interfaceEndpointAzHour) ? { flag: flagOf(r.interfaceEndpointAzHour) } : {}),
  });

  // CloudWatch alarms: one billed metric per metric the alarm reads (metric math reads several).
  const alarmMetrics = ofType('AWS::CloudWatch::Alarm').reduce((n, a) => n + Math.max(1, ((a.props['Metrics'] as Json[] | undefined) ?? []).filter((m) => m['MetricStat'] !== undefined).length), 0);
  add(fixed, {
    item: 'CloudWatch alarms',
    count: ofType('AWS::CloudWatch::Alarm').length,
    detail: `${alarmMetrics} alarm metrics x $${r.cloudwatchAlarmMetricMonth.usd} (before the account's 10 free)`,
    monthly: alarmMetrics * (r.cloudwatchAlarmMetricMonth.usd ?? 0),
  });
  const dashboards = ofType('AWS::CloudWatch::Dashboard').length;
  add(fixed, { item: 'CloudWatch dashboards', count: dashboards, detail: `$${r.cloudwatchDashboardMonth.usd} each (before the account's 3 free)`, monthly: dashboards * (r.cloudwatchDashboardMonth.usd ?? 0) });
  const secrets = ofType('AWS::SecretsManager::Secret').length;
  add(fixed, { item: 'Secrets Manager secrets', count: secrets, detail: `$${r.secretMonth.usd} each`, monthly: secrets * (r.secretMonth.usd ?? 0), ...(flagOf(r.secretMonth) ? { flag: flagOf(r.secretMonth) } : {}) });
  const keys = ofType('AWS::KMS::Key').length;
  add(fixed, { item: 'KMS customer managed keys', count: keys, detail: `$${r.kmsKeyMonth.usd} each`, monthly: keys * (r.kmsKeyMonth.usd ?? 0) });

  // Usage: scheduled Lambda invocations are known; everything else depends on traffic.
  const functions = ofType('AWS::Lambda::Function');
  let invocations = 0;
  let gbSeconds = 0;
  let gbSecondCost = 0;
  for (const rule of [...ofType('AWS::Events::Rule'), ...ofType('AWS::Scheduler::Schedule')]) {
    const minutes = minutesOf(rule.props['ScheduleExpression']);
    if (minutes === undefined) continue;
    for (const t of ((rule.props['Targets'] ?? [rule.props['Target']]) as Json[]).filter(Boolean)) {
      const fn = byId.get(refTo(t['Arn']) ?? '');
      if (fn?.Type !== 'AWS::Lambda::Function') continue;
      const n = (H * 60) / minutes;
      const arch = (fn.props['Architectures'] as string[] | undefined)?.[0] === 'arm64' ? 'arm64' : 'x86_64';
      const s = n * (num(fn.props['MemorySize'], 128) / 1024) * options.lambdaSeconds;
      invocations += n;
      gbSeconds += s;
      gbSecondCost += s * r.lambdaGbSecond[arch];
    }
  }
  add(usage, {
    item: 'Lambda (scheduled invocations)',
    count: functions.length,
    detail: `${Math.round(invocations)} invocations x $${r.lambdaRequestMillion.usd}/million + ${Math.round(gbSeconds)} GB-s at ${options.lambdaSeconds} s each (before the free tier: 1M requests, 400,000 GB-s)`,
    monthly: (invocations / 1e6) * (r.lambdaRequestMillion.usd ?? 0) + gbSecondCost,
  });
  const apis = ofType('AWS::ApiGateway::RestApi').length;
  add(usage, { item: 'API Gateway REST API', count: apis, detail: `$${r.apiGatewayRestMillion.usd} per million requests`, monthly: 0, ...(flagOf(r.apiGatewayRestMillion) ? { flag: flagOf(r.apiGatewayRestMillion) } : {}) });
  add(usage, { item: 'Load balancer capacity units', count: albs.length, detail: `$${r.albLcuHour.usd} per LCU-hour, by traffic`, monthly: 0 });
  add(usage, { item: 'NAT gateway data', count: nats, detail: `$${r.natGatewayGb.usd}/GB processed`, monthly: 0 });
  const logGroups = ofType('AWS::Logs::LogGroup').length;
  add(usage, { item: 'CloudWatch Logs ingestion', count: logGroups, detail: `${logGroups} log groups (+ the Lambda functions' own); $${r.cloudwatchLogsIngestGb.usd}/GB ingested (5 GB free)`, monthly: 0 });

  const fixedTotal = fixed.reduce((sum, l) => sum + (l.monthly ?? 0), 0);
  return { fixed, usage, fixedTotal, unpriced: [...unpriced] };
}

/** Every `*.template.json` of a cloud assembly, nested stage assemblies included. */
export function readTemplates(dir: string): Templates {
  const out: Array<{ name: string; resources: Record<string, Resource> }> = [];
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    if (entry.endsWith('.template.json')) {
      const t = JSON.parse(readFileSync(path, 'utf8')) as { Resources?: Record<string, Resource> };
      out.push({ name: entry.replace(/\.template\.json$/, ''), resources: t.Resources ?? {} });
    } else if (entry.startsWith('assembly-') && statSync(path).isDirectory()) {
      out.push(...readTemplates(path));
    }
  }
  return out;
}

const usd = (n: number | undefined): string => (n === undefined ? 'unpriced' : `$${n.toFixed(2)}`);

/** The estimate as Markdown tables. */
export function formatEstimate(e: Estimate, prices: PriceFile): string {
  const row = (l: Line) => `| ${l.item}${l.flag === 'unconfirmed' ? ' (rate unconfirmed)' : ''} | ${l.count} | ${l.detail} | ${usd(l.monthly)} |`;
  return [
    `Prices: ${prices.region} on-demand list prices read ${prices.retrieved} (scripts/prices-${prices.region}.json names each page); ${prices.hoursPerMonth} h/month.`,
    '',
    '| Always billed | Count | How | Per month |',
    '|---|---|---|---|',
    ...e.fixed.map(row),
    `| **Total** | | | **${usd(e.fixedTotal)}**${e.unpriced.length > 0 ? ` + unpriced: ${e.unpriced.join(', ')}` : ''} |`,
    '',
    '| Billed by use | Count | Rate | Per month |',
    '|---|---|---|---|',
    ...e.usage.map((l) => `| ${l.item} | ${l.count} | ${l.detail} | ${l.monthly === 0 ? 'by traffic' : usd(l.monthly)} |`),
  ].join('\n');
}

const argsSchema = z.object({
  cdkOut: z.string().min(1),
  prices: z.string().min(1),
  lambdaSeconds: z.number().positive(),
  rates: z.array(z.string().regex(/^[A-Za-z]+\.[\w.-]+=\d+(\.\d+)?$/, 'must be KEY.NAME=USD, e.g. rdsInstanceHour.db.r7g.large=0.25')),
});

class UsageError extends Error {}

function parseArgs(argv: readonly string[]): z.infer<typeof argsSchema> {
  const out = { cdkOut: 'cdk.out', prices: resolve(import.meta.dirname, 'prices-us-east-1.json'), lambdaSeconds: 1, rates: [] as string[] };
  for (let i = 0; i < argv.length; i += 1) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined || !['--cdk-out', '--prices', '--lambda-seconds', '--rate'].includes(flag ?? '')) {
      throw new UsageError(`${flag ?? ''}: unknown flag or missing value (flags: --cdk-out DIR, --prices FILE, --lambda-seconds N, --rate KEY.NAME=USD)`);
    }
    if (flag === '--cdk-out') out.cdkOut = value;
    else if (flag === '--prices') out.prices = value;
    else if (flag === '--lambda-seconds') out.lambdaSeconds = Number(value);
    else out.rates.push(value);
    i += 1;
  }
  const parsed = argsSchema.safeParse(out);
  const flagName: Record<string, string> = { cdkOut: '--cdk-out', prices: '--prices', lambdaSeconds: '--lambda-seconds', rates: '--rate' };
  if (!parsed.success) throw new UsageError(parsed.error.issues.map((i) => `${flagName[String(i.path[0])] ?? String(i.path[0])}: ${i.message}`).join('; '));
  return parsed.data;
}

/** Applies `--rate rdsInstanceHour.db.r7g.large=0.25`-style overrides to a price file's raw JSON. */
function withRates(raw: unknown, rates: readonly string[]): unknown {
  const doc = structuredClone(raw) as { rates?: Record<string, Record<string, unknown>> };
  for (const r of rates) {
    const [path = '', value = ''] = r.split('=');
    const dot = path.indexOf('.');
    const key = path.slice(0, dot);
    const name = path.slice(dot + 1);
    const table = doc.rates?.[key];
    if (!table) throw new UsageError(`--rate: no rate table ${key}`);
    const entry = table[name];
    if (typeof entry === 'object' && entry !== null) Object.assign(entry, { usd: Number(value), source: `--rate on the command line`, unconfirmed: true });
    else table[name] = { usd: Number(value), vcpus: 2, source: '--rate on the command line', unconfirmed: true };
  }
  return doc;
}

function main(argv: readonly string[]): number {
  try {
    const args = parseArgs(argv);
    const prices = priceFileSchema.parse(withRates(JSON.parse(readFileSync(args.prices, 'utf8')), args.rates));
    const templates = readTemplates(args.cdkOut);
    if (templates.length === 0) throw new Error(`${args.cdkOut} holds no *.template.json: run npx cdk synth first`);
    console.log(formatEstimate(estimate(templates, prices, { lambdaSeconds: args.lambdaSeconds }), prices));
    return 0;
  } catch (error) {
    console.error(`cost-estimate: ${(error as Error).message}`);
    return error instanceof UsageError ? 2 : 1;
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = main(process.argv.slice(2));
}
