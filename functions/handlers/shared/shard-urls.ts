/**
 * `SHARD_DATABASE_URLS`, the shard primaries' URLs where no secrets name them (local mode, tests,
 * an operator's shell), read one way by every reader: the migrate function (`env.ts`),
 * `ca-dms-scaling migrate` (and its `--shard-url`) and `ca-dms-scaling shards fences` (and its
 * `--shard`). Each once had a format of its own (a JSON array; comma-separated URLs; `ID=URL`
 * pairs), so a value set for one command failed in another with an error about a fragment of a
 * URL, or echoed a password's first characters.
 *
 * Accepted, every form by every reader:
 * - a JSON array of strings: `["postgresql://...", ...]`;
 * - comma-separated: `postgresql://...,postgresql://...`;
 * - either of them with `ID=URL` entries: `shard_001=postgresql://...,shard_002=postgresql://...`
 *   (the id as the sharding configuration names the shard).
 * Every entry of one value (and of every repeat of a flag) takes one form: all `ID=URL` or none.
 * A comma inside a URL (a password, a query string) is kept: a list is cut only at a comma that
 * starts another entry (`scheme://` or `ID=scheme://` after it); `%2C`, or the JSON form, for a
 * URL in which a comma is followed by such text. An entry that ends with a comma (`a,,b`, a
 * trailing comma, or a URL whose last character is one) is refused: a blank entry and a URL's own
 * last comma read alike.
 * Refused, naming the variable (or flag), the entry and what is wrong, a URL shown only with its
 * password replaced (`redactUrl`): a mix of the forms, a shard id given twice, one database given
 * twice (two entries would be read as two shards), a URL that is not `postgres://` /
 * `postgresql://` with a host, a non-loopback URL without `sslmode=verify-full`, a bad shard id.
 *
 * Shard ids: an id given is honoured by every reader (the migrate summary names the shard by it;
 * the fences review reads the URL as that shard), whatever its position. Where none is given the
 * entry has its position only: the migrate function and command name it `shard N`, 1-based, as
 * before; a reader that needs the shard's id (the fences review judges each row by it) takes the
 * id of the N-th shard of `SHARDING_CONFIG_JSON`, as the functions pair `SHARD_DB_SECRET_ARNS` with
 * it (sharding-env.ts), and refuses the list without it: no rule of position names the shards
 * of every deployment (the CDK app's are `shard-001`, ...; local mode's `shard_001`, ...), and a
 * URL read under another shard's id would have rows of the one judged by the map of the other.
 *
 * @example
 * ```ts
 * parseShardUrls('shard_a=postgresql://u:p,w@127.0.0.1/a,shard_b=postgresql://u:p@127.0.0.1/b', 'SHARD_DATABASE_URLS');
 * // [{ id: 'shard_a', url: 'postgresql://u:p,w@127.0.0.1/a' }, { id: 'shard_b', url: 'postgresql://u:p@127.0.0.1/b' }]
 * shardUrlsById(parseShardUrls('["postgresql://127.0.0.1/a"]', 'SHARD_DATABASE_URLS'), 'SHARD_DATABASE_URLS', process.env);
 * // Map { 'shard_001' => 'postgresql://127.0.0.1/a' } with SHARDING_CONFIG_JSON naming shard_001 first
 * ```
 */
import { z } from 'zod';
import { redactUrl } from '../../core/sharding/config.js';
import { parseJsonText } from '../../core/json-text.js';
import { isLoopback } from '../../adapters/postgres/tls.js';

/** One shard primary as given: its id where the entry names one, and its URL as written. */
export interface ShardUrl {
  readonly id?: string;
  readonly url: string;
}

/** A shard list (or one of its URLs) is malformed; `problems` says each, prefixed with the variable or flag. */
export class ShardUrlsError extends Error {
  override readonly name = 'ShardUrlsError';
  constructor(
    readonly source: string,
    readonly problems: readonly string[],
    options?: { cause?: unknown },
  ) {
    super(problems.map((p) => `${source}: ${p}`).join('; '), options);
  }
}

/** A shard id, as the sharding configuration takes it (docs/sharding-spec.md section 6). */
export const SHARD_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

/** `ID=scheme://...`: the id part holds no ':' or '/', so no URL reads as a pair (its scheme's ':' comes first). */
const PAIR = /^([^=:/,]*)=([a-z][a-z0-9+.-]*:\/\/.*)$/is;

/** A comma that starts another entry: `scheme://` or `ID=scheme://` after it. */
const ENTRY_START = /,(?=\s*(?:[^=:/,]*=)?[a-z][a-z0-9+.-]*:\/\/)/i;

/** How an entry is shown in a message: at most 80 characters, its password replaced. */
function shown(raw: string): string {
  const safe = redactUrl(raw);
  return safe.length > 80 ? `${safe.slice(0, 77)}...` : safe;
}

/**
 * What is wrong with one database URL, or undefined: `postgres://` or `postgresql://` with a
 * host, and `sslmode=verify-full` for any host but loopback (TLS is always verified). The URL is
 * never repeated with its password.
 */
export function databaseUrlProblem(raw: string): string | undefined {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return `expected a postgresql:// URL, got "${shown(raw)}"`;
  }
  if (url.protocol !== 'postgresql:' && url.protocol !== 'postgres:') return `expected a postgresql:// URL, got "${url.protocol}//..."`;
  if (url.hostname === '') return `expected a postgresql:// URL with a host, got "${shown(raw)}"`;
  if (!isLoopback(url.hostname) && url.searchParams.get('sslmode') !== 'verify-full') return `${url.hostname} is not loopback: add sslmode=verify-full (TLS is always verified)`;
  return undefined;
}

/** Host, port and database: two spellings of one database compare equal. */
function endpointOf(raw: string): string {
  const u = new URL(raw);
  let database = u.pathname;
  try {
    database = decodeURIComponent(database);
  } catch {
    // A malformed escape (`%zz`): compared as written.
  }
  return `${u.hostname.toLowerCase()}:${u.port || '5432'}${database}`;
}

/**
 * The entries of one value, as written (trimmed, blank ones left out), or why they cannot be
 * read; `listed` where they were cut from a comma-separated list.
 */
function entriesOf(value: string): { entries: string[]; listed: boolean } | { problem: string } {
  const text = value.trim();
  if (text.startsWith('[')) {
    let parsed: unknown;
    try {
      parsed = parseJsonText(text);
    } catch (err) {
      // Not JSON.parse's own message: it quotes the text, a password with it.
      const at = /position (\d+)/.exec((err as Error).message)?.[1];
      return { problem: `starts with '[' but is not a valid JSON array${at === undefined ? '' : ` (at character ${at})`}: give a JSON array of URLs (or of ID=URL strings), or comma-separated URLs` };
    }
    if (!Array.isArray(parsed) || !parsed.every((e) => typeof e === 'string')) return { problem: 'must be a JSON array of strings: URLs, or ID=URL pairs' };
    return { entries: parsed.map((e) => e.trim()).filter((e) => e !== ''), listed: false };
  }
  return { entries: text.split(ENTRY_START).map((e) => e.trim()).filter((e) => e !== ''), listed: true };
}

/**
 * The shards a value (or every repeat of a flag, in order) gives, in order; `problems` lists
 * every entry that is wrong (each message without the source; {@link parseShardUrls} prefixes it).
 */
export function readShardUrls(values: string | readonly string[]): { shards: ShardUrl[]; problems: string[] } {
  const problems: string[] = [];
  const raw: string[] = [];
  /** Entries (1-based) that a comma-separated list ends with a comma. */
  const commaEnded = new Set<number>();
  for (const value of typeof values === 'string' ? [values] : values) {
    const read = entriesOf(value);
    if ('problem' in read) {
      problems.push(read.problem);
      continue;
    }
    for (const entry of read.entries) {
      raw.push(entry);
      if (read.listed && entry.endsWith(',')) commaEnded.add(raw.length);
    }
  }
  const shards: ShardUrl[] = [];
  const ids = new Map<string, number>();
  const endpoints = new Map<string, number>();
  let firstPair: number | undefined;
  let firstPlain: number | undefined;
  raw.forEach((entry, i) => {
    const n = i + 1;
    // A blank entry after it (`a,,b`, a trailing comma) or a URL that ends with a comma (a query
    // value, a database name): which one is not for this reader to guess, and either guess
    // would connect to a database the operator did not name.
    if (commaEnded.has(n)) {
      problems.push(`entry ${n} ends with a comma: remove the blank entry after it, or, where the URL itself ends with one, write it %2C or give the list as a JSON array`);
      return;
    }
    const pair = PAIR.exec(entry);
    const id = pair?.[1];
    const url = pair?.[2] ?? entry;
    if (id === undefined) firstPlain ??= n;
    else firstPair ??= n;
    if (id !== undefined && !SHARD_ID.test(id)) {
      problems.push(`entry ${n}: the shard id ${JSON.stringify(id.slice(0, 70))} is not one: 1-63 letters, digits, "_", "." or "-", starting with a letter or digit`);
      return;
    }
    const item = id === undefined ? `entry ${n}` : `shard ${id}`;
    const problem = databaseUrlProblem(url);
    if (problem !== undefined) {
      problems.push(`${item}: ${problem}`);
      return;
    }
    if (id !== undefined) {
      const before = ids.get(id);
      if (before !== undefined) problems.push(`shard ${id} is given twice (entries ${before} and ${n}): give each shard once`);
      else ids.set(id, n);
    }
    const endpoint = endpointOf(url);
    const same = endpoints.get(endpoint);
    if (same !== undefined) problems.push(`${item}: the same database as entry ${same} (${endpoint}): give each shard's primary once, every shard a database of its own`);
    else endpoints.set(endpoint, n);
    shards.push(id === undefined ? { url } : { id, url });
  });
  if (firstPair !== undefined && firstPlain !== undefined) {
    const [plain, paired] = [firstPlain, firstPair];
    problems.unshift(
      plain > paired
        ? `entry ${plain} is a plain URL, but entry ${paired} is ID=URL: give every entry as ID=URL, or none`
        : `entry ${paired} is ID=URL, but entry ${plain} is a plain URL: give every entry as ID=URL, or none`,
    );
  }
  return { shards, problems };
}

/**
 * The shards a value (or every repeat of a flag) gives; throws {@link ShardUrlsError} naming
 * `source` (the variable or the flag) and every entry that is wrong.
 */
export function parseShardUrls(values: string | readonly string[], source: string): ShardUrl[] {
  const { shards, problems } = readShardUrls(values);
  if (problems.length > 0) throw new ShardUrlsError(source, problems);
  return shards;
}

/** The zod form of {@link readShardUrls}, for an environment schema (each problem an issue of the variable). */
export const shardUrlsSchema = z.string().transform((raw, ctx) => {
  const { shards, problems } = readShardUrls(raw);
  for (const message of problems) ctx.addIssue({ code: 'custom', message });
  return problems.length > 0 ? z.NEVER : shards;
});

/**
 * Every shard's URL by its id, for a reader that must know which shard each URL is: the ids
 * given, or, for a list without ids, those of `SHARDING_CONFIG_JSON`'s shards in their order (as
 * the functions pair their secrets with them); an id given that the configuration does not name
 * is refused. Throws {@link ShardUrlsError} naming `source`.
 */
export function shardUrlsById(shards: readonly ShardUrl[], source: string, env: { readonly SHARDING_CONFIG_JSON?: string | undefined }): Map<string, string> {
  if (shards.length === 0) throw new ShardUrlsError(source, ['no shard given: name every shard primary as ID=URL']);
  const configured = configuredShardIds(env.SHARDING_CONFIG_JSON, source);
  const named = shards.every((s) => s.id !== undefined);
  if (named) {
    const unknown = configured === undefined ? [] : shards.filter((s) => !configured.includes(s.id as string));
    if (unknown.length > 0) {
      throw new ShardUrlsError(source, unknown.map((s) => `shard ${s.id as string} is not one of SHARDING_CONFIG_JSON's shards (${(configured ?? []).join(', ')})`));
    }
    return new Map(shards.map((s) => [s.id as string, s.url]));
  }
  if (configured === undefined) {
    throw new ShardUrlsError(source, [
      `expected ID=URL pairs: entry 1 names no shard id, and without SHARDING_CONFIG_JSON its position names none (the deployed shards are shard-001, ..., local mode's shard_001, ...): give each as ID=URL, the id as the sharding configuration names it, or set SHARDING_CONFIG_JSON so that the N-th URL is its N-th shard`,
    ]);
  }
  if (configured.length !== shards.length) {
    throw new ShardUrlsError(source, [`has ${shards.length} URL(s) for SHARDING_CONFIG_JSON's ${configured.length} shard(s) (${configured.join(', ')}): give one per shard, in the same order, or ID=URL pairs`]);
  }
  return new Map(shards.map((s, i) => [configured[i] as string, s.url]));
}

/** `SHARDING_CONFIG_JSON`'s shard ids in their order, or undefined when it is not set. */
function configuredShardIds(raw: string | undefined, source: string): string[] | undefined {
  if (raw === undefined || raw.trim() === '') return undefined;
  let doc: unknown;
  try {
    doc = parseJsonText(raw);
  } catch {
    throw new ShardUrlsError(source, ['SHARDING_CONFIG_JSON, which names the shards of URLs given without ids, is not valid JSON']);
  }
  const parsed = z.object({ shards: z.array(z.object({ shard_id: z.string().regex(SHARD_ID) }).loose()).min(1) }).loose().safeParse(doc);
  if (!parsed.success) throw new ShardUrlsError(source, ["SHARDING_CONFIG_JSON, which names the shards of URLs given without ids, has no valid shards[].shard_id"]);
  return parsed.data.shards.map((s) => s.shard_id);
}
