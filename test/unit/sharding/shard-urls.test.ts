import { describe, expect, it } from 'vitest';
import { parseShardUrls, readShardUrls, shardUrlsById, ShardUrlsError } from '../../../functions/handlers/shared/shard-urls.js';

const A = 'postgresql://app:p,w=1@127.0.0.1:5433/a?application_name=x,y=z';
const B = 'postgresql://app:secret@127.0.0.1:5434/b';
const SHARDING = JSON.stringify({ shards: [{ shard_id: 'shard_001' }, { shard_id: 'shard_002' }] });

function refusal(run: () => unknown): string {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(ShardUrlsError);
    return (error as Error).message;
  }
  throw new Error('accepted');
}

describe('SHARD_DATABASE_URLS: what each entry is', () => {
  it('keeps commas and "=" inside a password and a query string, cutting only where another entry starts', () => {
    expect(parseShardUrls(`${A},${B}`, 'SHARD_DATABASE_URLS')).toEqual([{ url: A }, { url: B }]);
    expect(parseShardUrls(`shard_a=${A}, shard_b=${B}`, 'SHARD_DATABASE_URLS')).toEqual([
      { id: 'shard_a', url: A },
      { id: 'shard_b', url: B },
    ]);
  });

  it('reads a JSON array of URLs or of ID=URL pairs, and repeated flags as one list', () => {
    expect(parseShardUrls(` ${JSON.stringify([A, B])} `, 'SHARD_DATABASE_URLS')).toEqual([{ url: A }, { url: B }]);
    expect(parseShardUrls([`shard_a=${A}`, JSON.stringify([`shard_b=${B}`])], '--shard')).toEqual([
      { id: 'shard_a', url: A },
      { id: 'shard_b', url: B },
    ]);
    expect(parseShardUrls('', 'SHARD_DATABASE_URLS')).toEqual([]);
    expect(parseShardUrls('[]', 'SHARD_DATABASE_URLS')).toEqual([]);
  });

  it('refuses a mix of ID=URL pairs and plain URLs, in any order and across repeated flags', () => {
    expect(refusal(() => parseShardUrls(`shard_a=${A},${B}`, 'SHARD_DATABASE_URLS'))).toBe('SHARD_DATABASE_URLS: entry 2 is a plain URL, but entry 1 is ID=URL: give every entry as ID=URL, or none');
    expect(refusal(() => parseShardUrls([A, `shard_b=${B}`], '--shard-url'))).toBe('--shard-url: entry 2 is ID=URL, but entry 1 is a plain URL: give every entry as ID=URL, or none');
  });

  it('refuses a shard given twice, by its id or by its database, naming both entries', () => {
    expect(refusal(() => parseShardUrls(`shard_a=${A},shard_a=${B}`, 'SHARD_DATABASE_URLS'))).toBe('SHARD_DATABASE_URLS: shard shard_a is given twice (entries 1 and 2): give each shard once');
    // The same database spelt twice (another login, the default port written out): two ids would read one shard's rows as two.
    expect(refusal(() => parseShardUrls('postgresql://u@127.0.0.1/a,postgresql://v@127.0.0.1:5432/%61', 'SHARD_DATABASE_URLS'))).toBe(
      "SHARD_DATABASE_URLS: entry 2: the same database as entry 1 (127.0.0.1:5432/a): give each shard's primary once, every shard a database of its own",
    );
  });

  it('refuses a bad URL or shard id naming the entry, never showing the password', () => {
    const cases: Array<[string, string]> = [
      ['mysql://root:hunter2@127.0.0.1/a', 'SHARD_DATABASE_URLS: entry 1: expected a postgresql:// URL, got "mysql://..."'],
      ['shard_a=postgresql://u:hunter2@db.example.com/a', 'SHARD_DATABASE_URLS: shard shard_a: db.example.com is not loopback: add sslmode=verify-full (TLS is always verified)'],
      ['bad id=postgresql://u:hunter2@127.0.0.1/a', 'SHARD_DATABASE_URLS: entry 1: the shard id "bad id" is not one: 1-63 letters, digits, "_", "." or "-", starting with a letter or digit'],
      ['postgresql:///a?password=hunter2', 'SHARD_DATABASE_URLS: entry 1: expected a postgresql:// URL with a host, got "postgresql:///a?password=***"'],
      ['postgresql://u:hunter2@127.0.0.1:99999/a', 'SHARD_DATABASE_URLS: entry 1: expected a postgresql:// URL, got "postgresql://u:***@127.0.0.1:99999/a"'],
      ['["postgresql://u:hunter2@127.0.0.1/a"', "SHARD_DATABASE_URLS: starts with '[' but is not a valid JSON array (at character 37): give a JSON array of URLs (or of ID=URL strings), or comma-separated URLs"],
      ['[1, 2]', 'SHARD_DATABASE_URLS: must be a JSON array of strings: URLs, or ID=URL pairs'],
    ];
    for (const [value, message] of cases) {
      const got = refusal(() => parseShardUrls(value, 'SHARD_DATABASE_URLS'));
      expect(got).toBe(message);
      expect(got).not.toContain('hunter2');
    }
  });

  it('refuses an entry that ends with a comma (a blank entry, or a URL whose last character is one) instead of guessing which', () => {
    const problem = 'entry 1 ends with a comma: remove the blank entry after it, or, where the URL itself ends with one, write it %2C or give the list as a JSON array';
    expect(readShardUrls(`${B},,${A}`).problems).toEqual([problem]);
    expect(readShardUrls(`${B},`).problems).toEqual([problem]);
    expect(readShardUrls(`${B}, ,${A}`).problems).toEqual([problem]);
    // A leading comma leaves nothing before it to misread; a JSON array says where each URL ends.
    expect(readShardUrls(`,${B}`)).toEqual({ shards: [{ url: B }], problems: [] });
    expect(readShardUrls(JSON.stringify([`${B}?application_name=x,`]))).toEqual({ shards: [{ url: `${B}?application_name=x,` }], problems: [] });
  });
});

describe("SHARD_DATABASE_URLS: which shard each URL is, for a reader that needs the id", () => {
  it('honours the ids given, whatever their order, and checks them against SHARDING_CONFIG_JSON where it is set', () => {
    const swapped = parseShardUrls(`shard_002=${A},shard_001=${B}`, 'SHARD_DATABASE_URLS');
    expect([...shardUrlsById(swapped, 'SHARD_DATABASE_URLS', {})]).toEqual([
      ['shard_002', A],
      ['shard_001', B],
    ]);
    expect([...shardUrlsById(swapped, 'SHARD_DATABASE_URLS', { SHARDING_CONFIG_JSON: SHARDING })]).toEqual([
      ['shard_002', A],
      ['shard_001', B],
    ]);
    expect(refusal(() => shardUrlsById(parseShardUrls(`shard_01=${A}`, '--shard'), '--shard', { SHARDING_CONFIG_JSON: SHARDING }))).toBe(
      "--shard: shard shard_01 is not one of SHARDING_CONFIG_JSON's shards (shard_001, shard_002)",
    );
  });

  it("numbers URLs without ids by SHARDING_CONFIG_JSON's shards in order, as the functions pair their secrets, and only with one URL per shard", () => {
    expect([...shardUrlsById(parseShardUrls(`${A},${B}`, 'SHARD_DATABASE_URLS'), 'SHARD_DATABASE_URLS', { SHARDING_CONFIG_JSON: SHARDING })]).toEqual([
      ['shard_001', A],
      ['shard_002', B],
    ]);
    expect(refusal(() => shardUrlsById(parseShardUrls(A, 'SHARD_DATABASE_URLS'), 'SHARD_DATABASE_URLS', { SHARDING_CONFIG_JSON: SHARDING }))).toBe(
      "SHARD_DATABASE_URLS: has 1 URL(s) for SHARDING_CONFIG_JSON's 2 shard(s) (shard_001, shard_002): give one per shard, in the same order, or ID=URL pairs",
    );
  });

  it('refuses URLs without ids where nothing names their shards, and an empty list', () => {
    expect(refusal(() => shardUrlsById(parseShardUrls(`${A},${B}`, 'SHARD_DATABASE_URLS'), 'SHARD_DATABASE_URLS', {}))).toMatch(
      /^SHARD_DATABASE_URLS: expected ID=URL pairs: entry 1 names no shard id, and without SHARDING_CONFIG_JSON its position names none/,
    );
    expect(refusal(() => shardUrlsById([], 'SHARD_DATABASE_URLS', {}))).toBe('SHARD_DATABASE_URLS: no shard given: name every shard primary as ID=URL');
    expect(refusal(() => shardUrlsById(parseShardUrls(A, 'SHARD_DATABASE_URLS'), 'SHARD_DATABASE_URLS', { SHARDING_CONFIG_JSON: '{"shards": [' }))).toBe(
      'SHARD_DATABASE_URLS: SHARDING_CONFIG_JSON, which names the shards of URLs given without ids, is not valid JSON',
    );
  });
});
