import { CloudWatchClient, GetMetricDataCommand, type GetMetricDataCommandInput } from '@aws-sdk/client-cloudwatch';
import { mockClient } from 'aws-sdk-client-mock';
import { Readable } from 'node:stream';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { CloudWatchMetricsSource } from '../../../functions/adapters/aws/cloudwatch-metrics.js';
import { parseTopology } from '../../../functions/adapters/aws/topology.js';
import { metricAnswer, serviceNames, topologyOf } from '../../support/scaling-fixtures.js';

const NOW = Date.UTC(2026, 0, 5, 12, 0, 30);
const cw = mockClient(CloudWatchClient);

afterEach(() => cw.reset());

function source(n: number, topology = topologyOf(n)): CloudWatchMetricsSource {
  return new CloudWatchMetricsSource({ client: new CloudWatchClient({ region: 'eu-west-1' }), topology });
}

function inputs(): GetMetricDataCommandInput[] {
  return cw.commandCalls(GetMetricDataCommand).map((c) => c.args[0].input);
}

describe('CloudWatch metrics source', () => {
  it('reads 10 services x 6 metrics, and their shared load balancer\'s 2, with one GetMetricData call', async () => {
    cw.on(GetMetricDataCommand).callsFake((input: GetMetricDataCommandInput) => ({ MetricDataResults: metricAnswer(input, () => 50) }));

    const readings = await source(10).read(serviceNames(10), NOW);

    expect(inputs()).toHaveLength(1);
    expect(inputs()[0]?.MetricDataQueries).toHaveLength(62);
    expect([...readings.values()].every((r) => r.ok)).toBe(true);
  });

  it('asks for the exact metrics, dimensions, statistics and window', async () => {
    cw.on(GetMetricDataCommand).resolves({ MetricDataResults: [] });

    await source(1).read(['svc-0'], NOW);

    const input = inputs()[0];
    expect(input?.StartTime).toEqual(new Date(Date.UTC(2026, 0, 5, 11, 55, 0)));
    expect(input?.EndTime).toEqual(new Date(Date.UTC(2026, 0, 5, 12, 0, 0)));
    expect(input?.ScanBy).toBe('TimestampDescending');
    const tg = [
      { Name: 'TargetGroup', Value: 'targetgroup/svc-0/0000000000000001' },
      { Name: 'LoadBalancer', Value: 'app/ca-dms/00000000000000aa' },
    ];
    const ecs = [
      { Name: 'ClusterName', Value: 'ca-dms' },
      { Name: 'ServiceName', Value: 'ca-dms-svc-0' },
    ];
    const stat = (ns: string, name: string, dims: unknown, s: string) => ({ Metric: { Namespace: ns, MetricName: name, Dimensions: dims }, Period: 60, Stat: s });
    expect(input?.MetricDataQueries?.map((q) => q.MetricStat)).toEqual([
      stat('AWS/ECS', 'CPUUtilization', ecs, 'Average'),
      stat('AWS/ECS', 'MemoryUtilization', ecs, 'Average'),
      stat('AWS/ApplicationELB', 'TargetResponseTime', tg, 'p95'),
      stat('AWS/ApplicationELB', 'RequestCountPerTarget', tg, 'Sum'),
      stat('AWS/ApplicationELB', 'HTTPCode_Target_5XX_Count', tg, 'Sum'),
      stat('AWS/ApplicationELB', 'RequestCount', tg, 'Sum'),
      stat('AWS/ApplicationELB', 'ActiveConnectionCount', [{ Name: 'LoadBalancer', Value: 'app/ca-dms/00000000000000aa' }], 'Sum'),
      stat('AWS/ApplicationELB', 'RequestCount', [{ Name: 'LoadBalancer', Value: 'app/ca-dms/00000000000000aa' }], 'Sum'),
    ]);
  });

  it('reads whole periods ending at the last complete minute, whatever the time of the call', async () => {
    cw.on(GetMetricDataCommand).resolves({ MetricDataResults: [] });
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: Date.UTC(2020, 0, 1), max: Date.UTC(2035, 0, 1) }), async (now) => {
        cw.resetHistory();
        await source(1).read(['svc-0'], now);
        const { StartTime, EndTime } = inputs()[0] ?? {};
        const end = (EndTime as Date).getTime();
        const start = (StartTime as Date).getTime();
        // EndTime is exclusive: the minute still being filled (end..now) is never read.
        expect(end % 60_000).toBe(0);
        expect(end <= now && now - end < 60_000).toBe(true);
        expect((end - start) % 60_000).toBe(0);
      }),
      { verbose: true },
    );
  });

  it('counts 5xx responses in the minute of the request count, as 0 when CloudWatch omitted them', async () => {
    const minute = (k: number): Date => new Date(Date.UTC(2026, 0, 5, 12, 0, 0) - k * 60_000);
    const answer = (errors: { at: Date; n: number }[]) => (input: GetMetricDataCommandInput) => ({
      MetricDataResults: (input.MetricDataQueries ?? []).map((q) => {
        const series: Record<string, { at: Date; n: number }[]> = {
          s0_cpu: [{ at: minute(1), n: 50 }],
          s0_mem: [{ at: minute(1), n: 50 }],
          s0_rpt: [{ at: minute(1), n: 100 }, { at: minute(3), n: 90 }],
          s0_req: [{ at: minute(1), n: 300 }],
          s0_err: errors,
          lb0_conn: [{ at: minute(1), n: 30 }],
          lb0_req: [{ at: minute(1), n: 300 }],
        };
        const points = series[q.Id ?? ''] ?? [];
        return { Id: q.Id, StatusCode: 'Complete', Timestamps: points.map((p) => p.at), Values: points.map((p) => p.n) };
      }),
    });

    cw.on(GetMetricDataCommand).callsFake(answer([{ at: minute(3), n: 45 }]));
    const quiet = (await source(1).read(['svc-0'], NOW)).get('svc-0');
    cw.on(GetMetricDataCommand).callsFake(answer([{ at: minute(1), n: 7 }, { at: minute(3), n: 45 }]));
    const failing = (await source(1).read(['svc-0'], NOW)).get('svc-0');

    // Minute 3's burst is not the last minute's: the last minute had no 5xx, so none were published.
    expect(quiet?.ok === true && quiet.metrics.errorCount).toBe(0);
    expect(failing?.ok === true && failing.metrics.errorCount).toBe(7);
  });

  it('reads the queue-depth metric named by the configuration', async () => {
    const topology = parseTopology({
      services: {
        worker: {
          cluster: 'ca-dms',
          ecsService: 'ca-dms-worker',
          queue: { namespace: 'AWS/SQS', metricName: 'ApproximateNumberOfMessagesVisible', dimensions: [{ name: 'QueueName', value: 'jobs' }], statistic: 'Maximum' },
        },
      },
    });
    cw.on(GetMetricDataCommand).callsFake((input: GetMetricDataCommandInput) => ({ MetricDataResults: metricAnswer(input, (id) => (id.endsWith('_queue') ? 340 : 20)) }));

    const readings = await source(0, topology).read(['worker'], NOW);

    const queue = inputs()[0]?.MetricDataQueries?.find((q) => q.Id?.endsWith('_queue'));
    expect(queue?.MetricStat).toEqual({
      Metric: { Namespace: 'AWS/SQS', MetricName: 'ApproximateNumberOfMessagesVisible', Dimensions: [{ Name: 'QueueName', Value: 'jobs' }] },
      Period: 60,
      Stat: 'Maximum',
    });
    expect(readings.get('worker')).toEqual({ ok: true, metrics: { cpu: 20, memory: 20, queueDepth: 340 } });
  });

  it('follows NextToken and keeps the newest datapoint of each query across pages', async () => {
    cw.on(GetMetricDataCommand)
      .resolvesOnce({
        MetricDataResults: [{ Id: 's0_cpu', StatusCode: 'PartialData', Timestamps: [new Date(NOW - 120_000)], Values: [40] }],
        NextToken: 'page-2',
      })
      .resolvesOnce({
        MetricDataResults: [
          { Id: 's0_cpu', StatusCode: 'Complete', Timestamps: [new Date(NOW - 60_000)], Values: [70] },
          { Id: 's0_mem', StatusCode: 'Complete', Timestamps: [new Date(NOW - 60_000)], Values: [55] },
        ],
      });

    const readings = await source(1).read(['svc-0'], NOW);

    expect(inputs().map((i) => i.NextToken)).toEqual([undefined, 'page-2']);
    expect(inputs()[1]?.MetricDataQueries).toEqual(inputs()[0]?.MetricDataQueries);
    expect(readings.get('svc-0')).toEqual({ ok: true, metrics: { cpu: 70, memory: 55, requestCountPerTarget: 0, errorCount: 0, activeConnections: 0 } });
  });

  it('leaves metrics without datapoints out instead of reporting zero', async () => {
    cw.on(GetMetricDataCommand).callsFake((input: GetMetricDataCommandInput) => ({
      MetricDataResults: metricAnswer(input, (id) => ({ s0_cpu: 64, s0_rt: 0.25, lb0_conn: 5, lb0_req: 12 })[id]),
    }));

    const readings = await source(1).read(['svc-0'], NOW);

    // memory, requests per target and 5xx had no datapoints; the load balancer did, so it is not idle
    expect(readings.get('svc-0')).toEqual({ ok: true, metrics: { cpu: 64, responseTimeMs: 250, activeConnections: 5 } });
  });

  it('reports no requests, errors or connections for an ALB that published nothing (idle), but no response time', async () => {
    cw.on(GetMetricDataCommand).callsFake((input: GetMetricDataCommandInput) => ({
      MetricDataResults: metricAnswer(input, (id) => ({ s0_cpu: 3, s0_mem: 31, s1_mem: 30 })[id]),
    }));

    const readings = await source(3).read(['svc-0', 'svc-1', 'svc-2'], NOW);

    expect(readings.get('svc-0')).toEqual({ ok: true, metrics: { cpu: 3, memory: 31, requestCountPerTarget: 0, errorCount: 0, activeConnections: 0 } });
    expect(readings.get('svc-1')).toEqual({ ok: true, metrics: { memory: 30, requestCountPerTarget: 0, errorCount: 0, activeConnections: 0 } });
    // nothing at all came back for svc-2: that is missing data, not an idle service
    expect(readings.get('svc-2')).toEqual({ ok: true, metrics: {} });
  });

  it('splits only beyond 500 queries, never splitting one service across requests', async () => {
    cw.on(GetMetricDataCommand).callsFake((input: GetMetricDataCommandInput) => ({ MetricDataResults: metricAnswer(input, () => 1) }));

    const readings = await source(90).read(serviceNames(90), NOW);

    // 83 services x 6 + the load balancer's 2 = 500; then 7 x 6 + 2
    expect(inputs().map((i) => i.MetricDataQueries?.length)).toEqual([500, 44]);
    for (const input of inputs()) expect(input.MetricDataQueries?.filter((q) => q.Id?.startsWith('lb0_')).map((q) => q.Id)).toEqual(['lb0_conn', 'lb0_req']);
    expect(readings.size).toBe(90);
    expect([...readings.values()].every((r) => r.ok)).toBe(true);
  });

  it('reports every service of a throttled request as unavailable, with the error', async () => {
    cw.on(GetMetricDataCommand).rejects(Object.assign(new Error('Rate exceeded'), { name: 'ThrottlingException' }));

    const readings = await source(2).read(['svc-0', 'svc-1'], NOW);

    expect(readings.get('svc-0')).toEqual({ ok: false, error: 'CloudWatch GetMetricData failed: ThrottlingException: Rate exceeded' });
    expect(readings.get('svc-1')?.ok).toBe(false);
  });

  it('reports a service missing from the topology without asking CloudWatch for it', async () => {
    cw.on(GetMetricDataCommand).callsFake((input: GetMetricDataCommandInput) => ({ MetricDataResults: metricAnswer(input, () => 1) }));

    const readings = await source(1).read(['svc-0', 'ghost'], NOW);

    expect(readings.get('ghost')).toEqual({ ok: false, error: 'service ghost is missing from the scaling topology' });
    expect(inputs()[0]?.MetricDataQueries).toHaveLength(8);
  });

  describe('active connections on a load balancer several services share', () => {
    const at = (minutesAgo: number): Date => new Date(Date.UTC(2026, 0, 5, 12, 0, 0) - minutesAgo * 60_000);
    const answer = (points: Record<string, Array<[number, number]>>) => (input: GetMetricDataCommandInput) => ({
      MetricDataResults: (input.MetricDataQueries ?? []).map((q) => {
        const p = points[q.Id ?? ''] ?? [];
        return { Id: q.Id, StatusCode: 'Complete' as const, Timestamps: p.map(([m]) => at(m)), Values: p.map(([, v]) => v) };
      }),
    });

    it('gives each service the load balancer\'s connections in proportion to its requests', async () => {
      cw.on(GetMetricDataCommand).callsFake(
        answer({ lb0_conn: [[1, 400]], lb0_req: [[1, 1000]], s0_req: [[1, 750]], s1_req: [[1, 250]], s0_cpu: [[1, 50]], s1_cpu: [[1, 20]] }),
      );

      const readings = await source(2).read(['svc-0', 'svc-1'], NOW);

      expect(readings.get('svc-0')).toEqual({ ok: true, metrics: { cpu: 50, activeConnections: 300 } });
      expect(readings.get('svc-1')).toEqual({ ok: true, metrics: { cpu: 20, activeConnections: 100 } });
    });

    it('shares out the newest minute that has both load-balancer counts, and 0 to a target group that served none of it', async () => {
      // the newest connection count (minute 1) has no request count yet: minute 2 is used;
      // svc-1's target group has no datapoint at minute 2, so it served none of those requests
      cw.on(GetMetricDataCommand).callsFake(
        answer({ lb0_conn: [[1, 900], [2, 600]], lb0_req: [[2, 300], [3, 100]], s0_req: [[1, 50], [2, 300]], s1_req: [[3, 100]] }),
      );

      const readings = await source(2).read(['svc-0', 'svc-1'], NOW);

      expect(readings.get('svc-0')).toEqual({ ok: true, metrics: { activeConnections: 600 } });
      expect(readings.get('svc-1')).toEqual({ ok: true, metrics: { activeConnections: 0 } });
    });

    it('leaves the connections out when the load balancer reported no requests to share them by', async () => {
      cw.on(GetMetricDataCommand).callsFake(answer({ lb0_conn: [[1, 40]], s0_cpu: [[1, 10]] }));

      const readings = await source(2).read(['svc-0', 'svc-1'], NOW);

      expect(readings.get('svc-0')).toEqual({ ok: true, metrics: { cpu: 10 } });
    });

    it('gives a service alone on its load balancer all of its connections, requests or not', async () => {
      cw.on(GetMetricDataCommand).callsFake(answer({ lb0_conn: [[1, 40]] }));

      const readings = await source(1).read(['svc-0'], NOW);

      expect(readings.get('svc-0')).toEqual({ ok: true, metrics: { activeConnections: 40 } });
    });

    it('counts a load balancer as shared when other configured services use it, even if only one is read', async () => {
      cw.on(GetMetricDataCommand).callsFake(answer({ lb0_conn: [[1, 400]], lb0_req: [[1, 1000]], s0_req: [[1, 250]] }));

      const readings = await source(3).read(['svc-0'], NOW);

      expect(readings.get('svc-0')).toEqual({ ok: true, metrics: { activeConnections: 100 } });
    });

    it('asks for each load balancer once per request, whichever services use it', async () => {
      const topology = topologyOf(3, { 'svc-2': { loadBalancer: 'app/other/00000000000000bb' } });
      cw.on(GetMetricDataCommand).resolves({ MetricDataResults: [] });

      await source(3, topology).read(['svc-0', 'svc-1', 'svc-2'], NOW);

      const lbQueries = inputs()[0]?.MetricDataQueries?.filter((q) => q.Id?.startsWith('lb')).map((q) => [q.Id, q.MetricStat?.Metric?.Dimensions?.[0]?.Value]);
      expect(lbQueries).toEqual([
        ['lb0_conn', 'app/ca-dms/00000000000000aa'],
        ['lb0_req', 'app/ca-dms/00000000000000aa'],
        ['lb1_conn', 'app/other/00000000000000bb'],
        ['lb1_req', 'app/other/00000000000000bb'],
      ]);
    });
  });
});

describe('CloudWatch through the real SDK stack (in-process HTTP handler)', () => {
  it('retries a throttled GetMetricData with backoff and then reads the metrics', async () => {
    cw.restore();
    let attempts = 0;
    const reply = (statusCode: number, headers: Record<string, string>, body: unknown) => ({
      response: { statusCode, headers: { 'content-type': 'application/x-amz-json-1.0', ...headers }, body: Readable.from([Buffer.from(JSON.stringify(body))]) },
    });
    const client = new CloudWatchClient({
      region: 'eu-west-1',
      credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' },
      maxAttempts: 3,
      requestHandler: {
        handle: async () => {
          attempts += 1;
          if (attempts < 3) return reply(400, { 'x-amzn-query-error': 'Throttling;Sender' }, { __type: 'com.amazonaws.cloudwatch#Throttling', message: 'Rate exceeded' });
          return reply(200, {}, { MetricDataResults: [{ Id: 's0_cpu', StatusCode: 'Complete', Timestamps: [(NOW - 60_000) / 1000], Values: [91] }] });
        },
      },
    });

    const readings = await new CloudWatchMetricsSource({ client, topology: topologyOf(1) }).read(['svc-0'], NOW);

    expect(attempts).toBe(3);
    // the load balancer published nothing: an idle ALB, so no requests, errors or connections
    expect(readings.get('svc-0')).toEqual({ ok: true, metrics: { cpu: 91, requestCountPerTarget: 0, errorCount: 0, activeConnections: 0 } });
  });

  it('gives up when the time budget runs out, reporting the services as unavailable', async () => {
    cw.restore();
    const client = new CloudWatchClient({
      region: 'eu-west-1',
      credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' },
      requestHandler: {
        // A request that never answers: only the caller's abort signal ends it.
        handle: (_request: unknown, options?: { abortSignal?: AbortSignal }) =>
          new Promise((_resolve, reject) => {
            options?.abortSignal?.addEventListener('abort', () => reject(Object.assign(new Error('Request aborted'), { name: 'AbortError' })));
          }),
      },
    });
    const started = Date.now();

    const readings = await new CloudWatchMetricsSource({ client, topology: topologyOf(1) }).read(['svc-0'], NOW, AbortSignal.timeout(200));

    expect(Date.now() - started).toBeLessThan(5_000);
    expect(readings.get('svc-0')).toEqual({ ok: false, error: 'CloudWatch GetMetricData failed: AbortError: Request aborted' });
  });
});
