#!/usr/bin/env node
// The installed command (package.json "bin", `npx ca-dms-scaling ...`, `npm start`): plain
// JavaScript so that node runs it with no flags and from any directory; it registers the tsx
// loader (resolved from this package, not from the caller's directory), then runs the
// TypeScript CLI in this same process, so a signal sent to this pid reaches the CLI itself.
import { register } from 'tsx/esm/api';

register();
await import('./cli.ts');
