/**
 * GET /shards/fences a page at a time. The listing (fence-review.ts `listFences`) is read whole, as
 * the review judges it; the route answers a page of it. Whole, the answer grew with the moves made
 * (every key a directory move took off its slot's owner leaves a listed `moved` row there; with
 * all=true every row of every shard is listed) and, past about 14,000 rows, was more than the 6 MB
 * a Lambda function invoked synchronously may answer: API Gateway answered 502 where local mode
 * answered 200 (hand-changes-rds-logins.test.ts). Rows are ordered by shard, kind and unit, code
 * point by code point, and a page starts after the row its cursor names, so a row is listed once
 * across the pages as long as it stays in the listing (a row that leaves or joins it meanwhile is
 * missed or listed once, as a keyset page of any changing list).
 *
 * @example
 * ```ts
 * const cursor = query.cursor === undefined ? undefined : fenceCursorAfter(query.cursor); // undefined: not ours, a 400
 * const page = fencePage(listing, { limit: 1000, after: cursor });
 * ```
 */
import { compareCodePoints as compareText } from '../core/sharding/slot-map.js';
import type { FenceListingView, FencePageView } from './service.js';

type Row = FenceListingView['rows'][number];

/** Where a page starts: after the row of this shard, kind and unit. */
export interface FenceCursor {
  readonly shard: string;
  readonly kind: string;
  readonly unitId: string;
}

function compareRows(a: FenceCursor, b: FenceCursor): number {
  return compareText(a.shard, b.shard) || compareText(a.kind, b.kind) || compareText(a.unitId, b.unitId);
}

/** The cursor of the page after `row`: opaque (base64url of the row's shard, kind and unit), so that clients do not build their own. */
export function fenceCursorOf(row: FenceCursor): string {
  return Buffer.from(`f:${JSON.stringify([row.shard, row.kind, row.unitId])}`, 'utf8').toString('base64url');
}

/** The row a cursor this API returned names, or undefined for any other text (a 400 for the caller to answer). */
export function fenceCursorAfter(cursor: string): FenceCursor | undefined {
  if (!/^[A-Za-z0-9_-]+$/.test(cursor)) return undefined;
  const decoded = Buffer.from(cursor, 'base64url').toString('utf8');
  // Only what fenceCursorOf hands out: text that encodes back to the same cursor (bytes that are
  // not UTF-8 read as U+FFFD would name another row), a prefix, three strings.
  if (Buffer.from(decoded, 'utf8').toString('base64url') !== cursor || !decoded.startsWith('f:')) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(decoded.slice(2));
  } catch {
    return undefined;
  }
  if (!Array.isArray(parsed) || parsed.length !== 3 || !parsed.every((p) => typeof p === 'string')) return undefined;
  const [shard, kind, unitId] = parsed as [string, string, string];
  return { shard, kind, unitId };
}

/** Up to `limit` rows of `listing` after `after` (from the first without it), with the cursor of the next page (null on the last). */
export function fencePage(listing: FenceListingView, options: { readonly limit: number; readonly after?: FenceCursor | undefined }): FencePageView {
  const { after, limit } = options;
  const rows = [...listing.rows].sort(compareRows).filter((r: Row) => after === undefined || compareRows(r, after) > 0);
  const page = rows.slice(0, limit);
  const last = page[page.length - 1];
  return { ...listing, rows: page, next_cursor: rows.length > limit && last !== undefined ? fenceCursorOf(last) : null };
}
