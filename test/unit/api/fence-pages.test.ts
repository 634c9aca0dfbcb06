import { describe, expect, it } from 'vitest';
import { fenceCursorAfter, fenceCursorOf, fencePage } from '../../../functions/api/fence-pages.js';
import type { FenceListingView } from '../../../functions/api/service.js';

type Row = FenceListingView['rows'][number];

const row = (shard: string, kind: 'slot' | 'directory', unitId: string): Row => ({
  shard,
  kind,
  unitId,
  state: 'moved',
  jobId: null,
  movedTo: 'shard_b',
  mapVersion: '3',
  ageMs: 1,
  owner: shard,
  diagnosis: 'test',
  action: 'none',
});

const listing = (rows: Row[]): FenceListingView => ({ mapVersion: 7, rows, explained: 2, unreachable: ['shard_c (connection error ECONNREFUSED)'] });
const ids = (rows: readonly Row[]): string[] => rows.map((r) => `${r.shard}/${r.kind}/${r.unitId}`);

describe('GET /shards/fences pages', () => {
  // In the order the listing read them: shard by shard, slots as text, keys of any code points.
  const rows = [row('shard_b', 'slot', '7'), row('shard_a', 'slot', '10'), row('shard_a', 'directory', '\u{1F600}'), row('shard_a', 'directory', '\uFF5E'), row('shard_a', 'slot', '9')];

  it('orders the rows by shard, kind and unit, code point by code point (a key beyond U+FFFF after U+FF5E)', () => {
    expect(ids(fencePage(listing(rows), { limit: 10 }).rows)).toEqual(['shard_a/directory/\uFF5E', 'shard_a/directory/\u{1F600}', 'shard_a/slot/10', 'shard_a/slot/9', 'shard_b/slot/7']);
  });

  it('lists every row once across the pages, each page cut from the same listing, the last with next_cursor null', () => {
    const seen: string[] = [];
    let after: ReturnType<typeof fenceCursorAfter>;
    for (let pages = 0; ; pages++) {
      const page = fencePage(listing(rows), { limit: 2, after });
      expect(page.rows.length).toBeLessThanOrEqual(2);
      expect({ mapVersion: page.mapVersion, explained: page.explained, unreachable: page.unreachable }).toEqual({ mapVersion: 7, explained: 2, unreachable: ['shard_c (connection error ECONNREFUSED)'] });
      seen.push(...ids(page.rows));
      if (page.next_cursor === null) break;
      after = fenceCursorAfter(page.next_cursor);
      expect(pages).toBeLessThan(3);
    }
    expect(seen).toEqual(ids(fencePage(listing(rows), { limit: 10 }).rows));
  });

  it('answers one page, with next_cursor null, when the rows fit exactly', () => {
    expect(fencePage(listing(rows), { limit: rows.length }).next_cursor).toBeNull();
    expect(fencePage(listing([]), { limit: 1 })).toEqual({ ...listing([]), next_cursor: null });
  });

  it('goes on after a row that left the listing since its page was cut', () => {
    const first = fencePage(listing(rows), { limit: 2 });
    const without = rows.filter((r) => !(r.shard === 'shard_a' && r.unitId === '\u{1F600}'));
    const next = fencePage(listing(without), { limit: 2, after: fenceCursorAfter(first.next_cursor as string) });
    expect(ids(next.rows)).toEqual(['shard_a/slot/10', 'shard_a/slot/9']);
  });

  it('reads back only the cursors it hands out', () => {
    const cursor = fenceCursorOf({ shard: 'shard_a', kind: 'directory', unitId: 'tenant/42 "x"' });
    expect(fenceCursorAfter(cursor)).toEqual({ shard: 'shard_a', kind: 'directory', unitId: 'tenant/42 "x"' });
    const forged = (text: string): string => Buffer.from(text, 'utf8').toString('base64url');
    expect(
      ['', 'not a cursor!', `${cursor}=`, forged('k:tenant-42'), forged('f:["shard_a","slot"]'), forged('f:["shard_a","slot",7]'), forged('f:{"shard":"a"}'), forged('f:[nope'), Buffer.from([0x66, 0x3a, 0xff]).toString('base64url')].map(fenceCursorAfter),
    ).toEqual(Array(9).fill(undefined));
  });
});
