#!/usr/bin/env -S node --import tsx
// The operator CLI: "ca-dms-scaling <command> [flags]". Commands are registered in
// bin/commands/index.ts. (That registry holds the dynamic imports because tsx's import lexer
// misreads a file that has both a shebang line and a dynamic import.)
import { COMMANDS } from './commands/index.js';
import type { CliIo } from './commands/kit.js';
import { EXIT_USAGE, UsageError } from './commands/kit.js';

function overview(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((n) => n.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return `Usage: ca-dms-scaling <command> [flags]   (ca-dms-scaling <command> --help for its flags)\n\nCommands:\n${lines.join('\n')}\n`;
}

async function main(argv: readonly string[]): Promise<number> {
  const io: CliIo = {
    stdout: (t) => process.stdout.write(t),
    stderr: (t) => process.stderr.write(t),
    cwd: process.cwd(),
  };
  const [name, ...args] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    (name === undefined ? io.stderr : io.stdout)(overview());
    return name === undefined ? EXIT_USAGE : 0;
  }
  const entry = COMMANDS[name];
  if (!entry) {
    io.stderr(`ca-dms-scaling: unknown command "${name}"; valid commands: ${Object.keys(COMMANDS).join(', ')}\n`);
    return EXIT_USAGE;
  }
  const command = await entry.load();
  try {
    return await command.run(args, io);
  } catch (error) {
    if (error instanceof UsageError) {
      io.stderr(`ca-dms-scaling ${name}: ${error.message}\n(run "ca-dms-scaling ${name} --help" for usage)\n`);
      return EXIT_USAGE;
    }
    throw error;
  }
}

process.exitCode = await main(process.argv.slice(2));
