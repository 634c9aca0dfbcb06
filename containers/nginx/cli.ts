/**
 * Container start step: validates the `NGINX_*` environment, renders the template and writes
 * the configuration nginx is then exec'd with. Any invalid value ends the process with exit
 * code 78 (EX_CONFIG) and a message naming the variable; nothing is written.
 *
 * @example
 * ```sh
 * node render.mjs --template /opt/ca-dms-nginx/nginx.conf.template --out /etc/nginx/nginx.conf
 * ```
 */
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { NginxConfigError, PRODUCTION_RUNTIME, parseNginxEnv, renderNginxConfig } from './render.js';

const EX_USAGE = 64;
const EX_CONFIG = 78;

const flagsSchema = z.object({
  template: z.string({ error: '--template is required' }).min(1, '--template must not be empty'),
  out: z.string({ error: '--out is required' }).min(1, '--out must not be empty'),
});

function main(argv: readonly string[], env: NodeJS.ProcessEnv): number {
  let flags: z.output<typeof flagsSchema>;
  try {
    const { values } = parseArgs({
      args: [...argv],
      options: { template: { type: 'string' }, out: { type: 'string' } },
      strict: true,
      allowPositionals: false,
    });
    flags = flagsSchema.parse(values);
  } catch (error) {
    const detail = error instanceof z.ZodError ? error.issues.map((i) => i.message).join('; ') : String(error);
    console.error(`nginx-render: ${detail}\nusage: render --template FILE --out FILE`);
    return EX_USAGE;
  }
  try {
    const settings = parseNginxEnv(env);
    const conf = renderNginxConfig(readFileSync(flags.template, 'utf8'), settings, PRODUCTION_RUNTIME);
    // Written beside the target and renamed, so nginx never reads a half-written file.
    const tmp = `${flags.out}.tmp`;
    writeFileSync(tmp, conf);
    renameSync(tmp, flags.out);
    // stderr, with nginx's own diagnostics: the container's stdout is the access log, one
    // JSON object per line, and a line of prose there breaks whoever parses it.
    console.error(
      `nginx-render: wrote ${flags.out} (read pool ${settings.NGINX_READ_UPSTREAMS.length}, write pool ${settings.NGINX_WRITE_UPSTREAMS.length}, backups ${settings.NGINX_BACKUP_UPSTREAMS.length}, workers ${settings.NGINX_WORKER_PROCESSES})`,
    );
    return 0;
  } catch (error) {
    if (error instanceof NginxConfigError) {
      console.error(`nginx-render: ${error.message}\nnginx was not started.`);
      return EX_CONFIG;
    }
    throw error;
  }
}

process.exitCode = main(process.argv.slice(2), process.env);
