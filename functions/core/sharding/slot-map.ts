/**
 * Versioned slot maps: which shard owns each of the {@link SLOT_COUNT} slots. Maps are
 * immutable values; every change returns a new map with `version + 1`. The algorithms here are
 * part of the routing specification (docs/sharding-spec.md) so that other languages can build
 * byte-identical maps.
 *
 * @example
 * ```ts
 * const v1 = buildSlotMap([{ shardId: 'shard_001', weight: 1 }, { shardId: 'shard_002', weight: 1 }]);
 * const v2 = addShard(v1, 'shard_003', 1); // moves ~1365 slots, all to shard_003
 * const v3 = moveSlots(v2, [0, 1], 'shard_002');
 * ```
 */
import { z } from 'zod';
import { SlotMapError } from './errors.js';
import { SLOT_COUNT } from './hash.js';

/** `assignments[slot]` is the id of the shard that owns `slot`. */
export interface SlotMap {
  readonly version: number;
  readonly slotCount: number;
  readonly assignments: readonly string[];
}

export interface ShardWeight {
  readonly shardId: string;
  readonly weight: number;
}

/** One slot changing owner between two maps. */
export interface SlotChange {
  readonly slot: number;
  readonly from: string;
  readonly to: string;
}

/** Orders strings by Unicode code point (what Python's `<` on `str` does), not UTF-16 units. */
export function compareCodePoints(a: string, b: string): number {
  if (a === b) return 0;
  const ia = a[Symbol.iterator]();
  const ib = b[Symbol.iterator]();
  for (;;) {
    const x = ia.next();
    const y = ib.next();
    if (x.done) return y.done ? 0 : -1;
    if (y.done) return 1;
    const cx = x.value.codePointAt(0) as number;
    const cy = y.value.codePointAt(0) as number;
    if (cx !== cy) return cx < cy ? -1 : 1;
  }
}

function checkWeights(shards: readonly ShardWeight[]): void {
  if (shards.length === 0) throw new SlotMapError('a slot map needs at least one shard');
  const seen = new Set<string>();
  for (const s of shards) {
    if (s.shardId.length === 0) throw new SlotMapError('shard ids must not be empty');
    if (seen.has(s.shardId)) throw new SlotMapError(`shard ${s.shardId} is listed twice`);
    seen.add(s.shardId);
    if (!Number.isFinite(s.weight) || s.weight <= 0) throw new SlotMapError(`shard ${s.shardId} has weight ${s.weight}; weights must be positive`);
  }
}

/**
 * Slot quotas in proportion to weights by the largest-remainder method: shards sorted by id
 * (code points), `exact = slotCount * weight / total` with `total` summed in that order,
 * everyone gets `floor(exact)`, and the leftover slots go one each to the largest fractional
 * remainders, ties to the earlier shard id. Every quota is within one slot of `exact`.
 */
export function slotQuotas(shards: readonly ShardWeight[], slotCount: number = SLOT_COUNT): Map<string, number> {
  checkWeights(shards);
  const sorted = [...shards].sort((a, b) => compareCodePoints(a.shardId, b.shardId));
  let total = 0;
  for (const s of sorted) total += s.weight;
  const floors: number[] = [];
  const rems: number[] = [];
  let given = 0;
  for (const s of sorted) {
    const exact = (slotCount * s.weight) / total;
    const f = Math.floor(exact);
    floors.push(f);
    rems.push(exact - f);
    given += f;
  }
  const order = sorted.map((_, i) => i).sort((i, j) => (rems[j] as number) - (rems[i] as number) || i - j);
  for (let n = 0; n < slotCount - given; n++) {
    const i = order[n] as number;
    floors[i] = (floors[i] as number) + 1;
  }
  return new Map(sorted.map((s, i) => [s.shardId, floors[i] as number]));
}

/**
 * Builds version 1 (or `options.version`) of a slot map: quotas from {@link slotQuotas}, then
 * contiguous runs in shard-id order (the first shard owns slots `0..q0-1`, the next the
 * following `q1`, ...).
 */
export function buildSlotMap(shards: readonly ShardWeight[], options: { slotCount?: number; version?: number } = {}): SlotMap {
  const slotCount = options.slotCount ?? SLOT_COUNT;
  if (!Number.isInteger(slotCount) || slotCount < 1) throw new SlotMapError(`slot count must be a positive integer, got ${slotCount}`);
  const assignments: string[] = [];
  for (const [shardId, quota] of slotQuotas(shards, slotCount)) {
    for (let i = 0; i < quota; i++) assignments.push(shardId);
  }
  return { version: options.version ?? 1, slotCount, assignments };
}

/** Number of slots each shard owns, in first-seen slot order. */
export function slotCounts(map: SlotMap): Map<string, number> {
  const counts = new Map<string, number>();
  for (const id of map.assignments) counts.set(id, (counts.get(id) ?? 0) + 1);
  return counts;
}

/** The slots owned by `shardId`, ascending. */
export function slotsOf(map: SlotMap, shardId: string): number[] {
  const out: number[] = [];
  map.assignments.forEach((id, slot) => {
    if (id === shardId) out.push(slot);
  });
  return out;
}

/**
 * Adds a shard, moving the fewest slots possible: exactly the new shard's quota (largest
 * remainder over all weights), every moved slot going to the new shard. Donors are chosen one
 * slot at a time: the shard furthest over its exact new share (`count - exact`), ties to the
 * larger count then the earlier shard id; it gives its highest-numbered slot.
 *
 * `weights` gives the existing shards' weights. Without it they are inferred from their current
 * slot counts, scaled so that the average existing shard weighs 1 (so `weight = 1` means "an
 * average shard").
 */
export function addShard(map: SlotMap, shardId: string, weight: number, weights?: Readonly<Record<string, number>>): SlotMap {
  const counts = slotCounts(map);
  if (counts.has(shardId)) throw new SlotMapError(`shard ${shardId} already owns slots in map version ${map.version}`);
  const existing: ShardWeight[] = [...counts.entries()]
    .sort(([a], [b]) => compareCodePoints(a, b))
    .map(([id, count]) => {
      if (weights === undefined) return { shardId: id, weight: (count * counts.size) / map.slotCount };
      const w = weights[id];
      if (w === undefined) throw new SlotMapError(`no weight given for shard ${id}, which owns ${count} slots`);
      return { shardId: id, weight: w };
    });
  const all = [...existing, { shardId, weight }];
  const quotas = slotQuotas(all, map.slotCount);
  const need = quotas.get(shardId) as number;
  if (need === 0) throw new SlotMapError(`shard ${shardId} with weight ${weight} would own no slot; give it a larger weight`);
  let total = 0;
  for (const s of [...all].sort((a, b) => compareCodePoints(a.shardId, b.shardId))) total += s.weight;
  const exact = new Map(existing.map((s) => [s.shardId, (map.slotCount * s.weight) / total]));
  const owned = new Map(existing.map((s) => [s.shardId, slotsOf(map, s.shardId)]));
  const assignments = [...map.assignments];
  for (let n = 0; n < need; n++) {
    let donor: string | undefined;
    let best = -Infinity;
    let bestCount = -1;
    for (const s of existing) {
      const slots = owned.get(s.shardId) as number[];
      if (slots.length === 0) continue;
      const over = slots.length - (exact.get(s.shardId) as number);
      if (over > best || (over === best && slots.length > bestCount)) {
        donor = s.shardId;
        best = over;
        bestCount = slots.length;
      }
    }
    if (donor === undefined) throw new SlotMapError('no shard has a slot to give');
    const slot = (owned.get(donor) as number[]).pop() as number;
    assignments[slot] = shardId;
  }
  return { version: map.version + 1, slotCount: map.slotCount, assignments };
}

/** Reassigns `slots` to shard `to`; returns the next version even if some slots were already there. */
export function moveSlots(map: SlotMap, slots: Iterable<number>, to: string): SlotMap {
  if (to.length === 0) throw new SlotMapError('target shard id must not be empty');
  const assignments = [...map.assignments];
  for (const slot of slots) {
    if (!Number.isInteger(slot) || slot < 0 || slot >= map.slotCount) throw new SlotMapError(`slot ${slot} is outside 0..${map.slotCount - 1}`);
    assignments[slot] = to;
  }
  return { version: map.version + 1, slotCount: map.slotCount, assignments };
}

/** The slots whose owner differs between two maps of the same slot count. */
export function diffSlotMaps(before: SlotMap, after: SlotMap): SlotChange[] {
  if (before.slotCount !== after.slotCount) throw new SlotMapError(`cannot compare maps of ${before.slotCount} and ${after.slotCount} slots`);
  const changes: SlotChange[] = [];
  for (let slot = 0; slot < before.slotCount; slot++) {
    const from = before.assignments[slot] as string;
    const to = after.assignments[slot] as string;
    if (from !== to) changes.push({ slot, from, to });
  }
  return changes;
}

/** The JSON form of a slot map (docs/sharding-spec.md, "Slot map format"). */
export const slotMapSchema = z
  .strictObject({
    version: z.number().int().min(1),
    slotCount: z.number().int().min(1),
    assignments: z.array(z.string().min(1)),
  })
  .refine((m) => m.assignments.length === m.slotCount, { message: 'assignments must have exactly slotCount entries', path: ['assignments'] });

/** Validates an untrusted slot map (JSON from the catalog, a file, an API body). */
export function parseSlotMap(input: unknown): SlotMap {
  const result = slotMapSchema.safeParse(input);
  if (!result.success) {
    const detail = result.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new SlotMapError(`invalid slot map: ${detail}`, { cause: result.error });
  }
  return result.data;
}
