import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { readShardUrls, type ShardUrl } from '../../functions/handlers/shared/shard-urls.js';

/** Text of the characters a password or a query value may hold here, commas and '=' among them ('@' escaped). */
const awkward = (minLength: number) => fc.array(fc.constantFrom('a', 'Z', '7', ',', '=', '-', '%40', '%2C', '.', '_', ';'), { minLength, maxLength: 12 }).map((cs) => cs.join(''));

const shardId = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,20}$/);

/** A URL as an operator writes one, of database `db_<n>`: loopback without TLS or a remote host with verified TLS, a password and a query with commas and '='. */
const urlOf = fc
  .record({
    host: fc.constantFrom('127.0.0.1', 'localhost', '[::1]', 'shard.example.com', 'db-1.internal'),
    port: fc.option(fc.integer({ min: 1, max: 65535 }), { nil: undefined }),
    user: fc.stringMatching(/^[a-z][a-z0-9_]{0,8}$/),
    password: fc.option(awkward(1), { nil: undefined }),
    app: fc.option(awkward(0), { nil: undefined }),
    scheme: fc.constantFrom('postgresql', 'postgres'),
  })
  .map(({ host, port, user, password, app, scheme }) => (db: number): string => {
    const params = [...(app === undefined ? [] : [`application_name=${app}`]), ...(['127.0.0.1', 'localhost', '[::1]'].includes(host) ? [] : ['sslmode=verify-full'])];
    return `${scheme}://${user}${password === undefined ? '' : `:${password}`}@${host}${port === undefined ? '' : `:${port}`}/db_${db}${params.length > 0 ? `?${params.join('&')}` : ''}`;
  });

/** 1 to 6 shards, each its own database, all with ids (distinct) or none. */
const shardList = fc
  .record({ urls: fc.array(urlOf, { minLength: 1, maxLength: 6 }), ids: fc.uniqueArray(shardId, { minLength: 6, maxLength: 6 }), named: fc.boolean() })
  .map(({ urls, ids, named }): ShardUrl[] => urls.map((url, i) => (named ? { id: ids[i] as string, url: url(i) } : { url: url(i) })));

/** How an operator may write the list: a JSON array, or commas with blanks around, split over several flags. */
const written = (shards: readonly ShardUrl[]) =>
  fc.record({ json: fc.boolean(), blanks: fc.array(fc.constantFrom('', ' ', '  \t'), { minLength: 2 * shards.length, maxLength: 2 * shards.length }), split: fc.integer({ min: 1, max: 3 }) }).map(({ json, blanks, split }) => {
    const entries = shards.map((s) => (s.id === undefined ? s.url : `${s.id}=${s.url}`));
    const groups: string[][] = Array.from({ length: Math.min(split, entries.length) }, () => []);
    entries.forEach((e, i) => groups[Math.floor((i * groups.length) / entries.length)]?.push(`${blanks[2 * i] ?? ''}${e}${blanks[2 * i + 1] ?? ''}`));
    return { json, values: groups.map((g) => (json ? JSON.stringify(g) : g.join(','))) };
  });

describe('SHARD_DATABASE_URLS read back', () => {
  it('gives back the same shards, ids and URLs, from every accepted form', () => {
    fc.assert(
      fc.property(
        shardList.chain((shards) => fc.tuple(fc.constant(shards), written(shards))),
        ([shards, { json, values }]) => {
          // In a list, a URL's own last comma reads as a blank entry after it: refused, never guessed.
          const commaEnded = json ? -1 : shards.findIndex((s) => s.url.endsWith(','));
          if (commaEnded >= 0) {
            expect(readShardUrls(values).problems).toContain(`entry ${commaEnded + 1} ends with a comma: remove the blank entry after it, or, where the URL itself ends with one, write it %2C or give the list as a JSON array`);
          } else {
            expect(readShardUrls(values)).toEqual({ shards, problems: [] });
          }
        },
      ),
      { numRuns: 500 },
    );
  });

  it('refuses a list of ID=URL pairs with one entry left without its id, naming the two forms by entry', () => {
    fc.assert(
      fc.property(
        shardList.filter((s) => s.length >= 2 && s[0]?.id !== undefined).chain((shards) => fc.tuple(fc.constant(shards), fc.integer({ min: 0, max: shards.length - 1 }))),
        ([shards, bare]) => {
          const mixed = JSON.stringify(shards.map((s, i) => (i === bare ? s.url : `${s.id as string}=${s.url}`)));
          const [first] = readShardUrls(mixed).problems;
          expect(first).toBe(
            bare === 0
              ? `entry 2 is ID=URL, but entry 1 is a plain URL: give every entry as ID=URL, or none`
              : `entry ${bare + 1} is a plain URL, but entry 1 is ID=URL: give every entry as ID=URL, or none`,
          );
        },
      ),
      { numRuns: 200 },
    );
  });
});
