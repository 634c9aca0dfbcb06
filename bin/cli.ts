#!/usr/bin/env -S node --import tsx
// The operator CLI: "ca-dms-scaling <command> [flags]". Commands are registered in
// bin/commands/index.ts. (That registry holds the dynamic imports because tsx's import lexer
// misreads a file that has both a shebang line and a dynamic import.)
import { readFileSync } from 'node:fs';
import { COMMANDS } from './commands/index.js';
import type { CliIo } from './commands/kit.js';
import { describeFailure, EXIT_FAILURE, EXIT_USAGE, UsageError } from './commands/kit.js';

function overview(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((n) => n.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return `Usage: ca-dms-scaling <command> [flags]   (ca-dms-scaling <command> --help for its flags)

Commands:
${lines.join('\n')}

Global flags:
  --version   print the version and exit
  --debug     print the stack trace of an unexpected failure
`;
}

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

async function main(argv: readonly string[], io: CliIo): Promise<number> {
  // --debug is global: taken out before the command parses its own flags.
  const debug = argv.includes('--debug');
  const [name, ...args] = argv.filter((a) => a !== '--debug');
  if (name === '--version' || name === '-v') {
    io.stdout(`ca-dms-scaling ${version()}\n`);
    return 0;
  }
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    (name === undefined ? io.stderr : io.stdout)(overview());
    return name === undefined ? EXIT_USAGE : 0;
  }
  const entry = COMMANDS[name];
  if (!entry) {
    io.stderr(`ca-dms-scaling: unknown command "${name}"; valid commands: ${Object.keys(COMMANDS).join(', ')}\n`);
    return EXIT_USAGE;
  }
  try {
    const command = await entry.load();
    return await command.run(args, io);
  } catch (error) {
    if (error instanceof UsageError) {
      io.stderr(`ca-dms-scaling ${name}: ${error.message}\n(run "ca-dms-scaling ${name} --help" for usage)\n`);
      return EXIT_USAGE;
    }
    // An operator's everyday mistake (a missing folder, a database that is down) is one line
    // saying what and what to do; the stack is for whoever debugs the tool itself.
    io.stderr(`ca-dms-scaling ${name}: ${describeFailure(error)}\n`);
    if (debug) io.stderr(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    else io.stderr('(add --debug for the stack trace)\n');
    return EXIT_FAILURE;
  }
}

// Output going nowhere (a closed terminal, `| head`) must not crash a run that still has
// servers to stop: the write is dropped, the run carries on.
for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);

const io: CliIo = {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
  cwd: process.cwd(),
};
process.exitCode = await main(process.argv.slice(2), io);
