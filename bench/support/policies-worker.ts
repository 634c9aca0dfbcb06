/** A `bench:policies` worker process: runs the jobs its parent sends and sends back the results. */
import type { PolicyJob } from './policies-job.js';
import { runPolicyJob } from './policies-job.js';

process.on('message', (job: PolicyJob) => {
  runPolicyJob(job).then(
    (result) => process.send?.({ ok: true, result }),
    (error: unknown) => process.send?.({ ok: false, error: error instanceof Error ? error.message : String(error) }),
  );
});
