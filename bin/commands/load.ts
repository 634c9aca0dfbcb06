/**
 * `ca-dms-scaling load` (`npm run load -- --url URL`): the load-test scenario (document reads and
 * writes plus scaling API reads) against local mode or a deployed load balancer. Prints requests
 * per second, latency percentiles and errors; exits 1 when the error rate passes the threshold.
 */
import { z } from 'zod';
import { LoadTestError, formatLoadReport, runLoadTest } from '../../functions/local/load-test.js';
import type { CliCommand, CliIo, FlagTable } from './kit.js';
import { numberFlag, parseFlags } from './kit.js';

const usage = `Usage: ca-dms-scaling load --url URL [--duration SECONDS] [--connections N] [--rate N]
                            [--max-error-rate PERCENT] [--format text|json]

Runs the CA-DMS load-test mix against URL: per 10 requests, 4 document reads, 2 reads of a
user's documents, 1 document write and 3 scaling API reads (status, metrics, history).

  --url URL                 the target, e.g. http://127.0.0.1:3000 or the load balancer's URL
  --duration SECONDS        how long to run, 1 to 3600 (default 30)
  --connections N           concurrent connections, 1 to 1000 (default 10)
  --rate N                  requests per second over all connections (default: as fast as it answers)
  --max-error-rate PERCENT  fail (exit 1) above this percentage of failed requests (default 1)
  --format text|json        output format (default text)
`;

const table: FlagTable = {
  url: { type: 'string' },
  duration: { type: 'string' },
  connections: { type: 'string' },
  rate: { type: 'string' },
  'max-error-rate': { type: 'string' },
  format: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
};

const httpUrl = z
  .string({ error: 'is required, e.g. --url http://127.0.0.1:3000' })
  .refine((raw) => {
    try {
      const u = new URL(raw);
      return (u.protocol === 'http:' || u.protocol === 'https:') && u.hostname !== '';
    } catch {
      return false;
    }
  }, 'expected an http:// or https:// URL such as http://127.0.0.1:3000');

const flagsSchema = z.object({
  help: z.boolean().optional(),
  url: httpUrl.optional(),
  duration: numberFlag({ min: 1, max: 3600, unit: 'seconds' }).optional(),
  connections: numberFlag({ min: 1, max: 1000, int: true }).optional(),
  rate: numberFlag({ min: 1, max: 1_000_000, int: true, unit: 'requests per second' }).optional(),
  'max-error-rate': numberFlag({ min: 0, max: 100, unit: 'percent' }).optional(),
  format: z.enum(['text', 'json'], { error: 'expected one of text, json' }).optional(),
});

const requiredUrl = flagsSchema.refine((f) => f.help === true || f.url !== undefined, { path: ['url'], message: 'is required, e.g. --url http://127.0.0.1:3000' });

async function run(args: readonly string[], io: CliIo): Promise<number> {
  const f = parseFlags(args, table, requiredUrl);
  if (f.help === true || f.url === undefined) {
    io.stdout(usage);
    return 0;
  }
  try {
    const report = await runLoadTest({
      url: f.url,
      durationSeconds: f.duration ?? 30,
      connections: f.connections ?? 10,
      ...(f.rate === undefined ? {} : { rate: f.rate }),
      maxErrorRate: f['max-error-rate'] ?? 1,
    });
    io.stdout(f.format === 'json' ? `${JSON.stringify(report, null, 2)}\n` : `${formatLoadReport(report)}\n`);
    return report.passed ? 0 : 1;
  } catch (error) {
    if (error instanceof LoadTestError) {
      io.stderr(`ca-dms-scaling load: ${error.message}\n`);
      return 1;
    }
    throw error;
  }
}

export const loadCommand: CliCommand = { name: 'load', summary: 'run the load-test mix (documents + scaling API) against a URL', usage, run };
