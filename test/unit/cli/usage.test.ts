/**
 * The usage text of every command, as `--help` prints it: a flag named in the synopsis is
 * explained in the flag list below it, with the same placeholder, so a reader can match them (`load` had PERCENT above and PCT below; `simulate` out.html and FILE).
 */
import { describe, expect, it } from 'vitest';
import { COMMANDS } from '../../../bin/commands/index.js';

/** `--flag PLACEHOLDER` pairs (placeholder '' for a switch) in a piece of usage text. */
function flags(text: string, pattern: RegExp): Map<string, string> {
  return new Map([...text.matchAll(pattern)].map((m) => [m[1] ?? '', m[2] ?? '']));
}

describe('command usage texts', () => {
  it.each(Object.keys(COMMANDS))('%s: every flag of the synopsis is in the flag list, with the same placeholder', async (name) => {
    const command = await COMMANDS[name]?.load();
    const usage = command?.usage ?? '';
    const [synopsis = '', ...rest] = usage.split('\n\n');
    // Synopsis: `[--flag PLACEHOLDER]`, `[--flag PLACEHOLDER ...]`, `--flag PLACEHOLDER` or `[--switch]`.
    const inSynopsis = flags(synopsis, /(--[a-z][a-z-]*)(?: ([A-Z][A-Z|]*|[a-z]+(?:\|[a-z]+)+|N\|auto))?(?=[\] ]|$)/gm);
    // Flag list: a line starting with spaces, the flag, its placeholder, then two spaces and the explanation.
    const inList = flags(rest.join('\n\n'), /^ {2,}(--[a-z][a-z-]*)(?: (\S+))? {2,}/gm);

    expect(inSynopsis.size).toBeGreaterThan(0);
    expect([...inSynopsis].filter(([flag, placeholder]) => inList.get(flag) !== placeholder).map(([flag, placeholder]) => `${flag} ${placeholder} (list: ${inList.get(flag) ?? 'missing'})`)).toEqual([]);
  });
});
