/**
 * MurmurHash3 x86 32-bit (Austin Appleby, SMHasher), the standard hash behind slot routing.
 * It is the same function as Python's `mmh3.hash(key, 0, signed=False)`, so the CA-DMS backend
 * routes identically (see docs/sharding-spec.md).
 *
 * @example
 * ```ts
 * murmur3String('Hello, world!', 1234); // 0xfaf6cdb3
 * slotOf('3f2c1d9e-8a7b-4c6d-9e0f-112233445566'); // 0..4095
 * ```
 */

/** Size of the fixed slot space: `slot = murmur3(key) mod SLOT_COUNT`. Never changes. */
export const SLOT_COUNT = 4096;

const C1 = 0xcc9e2d51;
const C2 = 0x1b873593;

const utf8 = new TextEncoder();

/** MurmurHash3_x86_32 of raw bytes; returns an unsigned 32-bit integer. */
export function murmur3_32(bytes: Uint8Array, seed = 0): number {
  const len = bytes.length;
  const blocks = len & ~3;
  let h = seed | 0;
  let i = 0;
  for (; i < blocks; i += 4) {
    let k = (bytes[i] as number) | ((bytes[i + 1] as number) << 8) | ((bytes[i + 2] as number) << 16) | ((bytes[i + 3] as number) << 24);
    k = Math.imul(k, C1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, C2);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  const rest = len & 3;
  if (rest > 0) {
    let k = 0;
    if (rest === 3) k ^= (bytes[i + 2] as number) << 16;
    if (rest >= 2) k ^= (bytes[i + 1] as number) << 8;
    k ^= bytes[i] as number;
    k = Math.imul(k, C1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, C2);
    h ^= k;
  }
  return fmix(h, len);
}

/**
 * MurmurHash3_x86_32 of a string's UTF-8 bytes. ASCII strings (UUIDs, numeric ids) are hashed
 * straight from their char codes without allocating; any other string is encoded once with
 * `TextEncoder`, whose UTF-8 (lone surrogates become U+FFFD) matches Python's `str.encode`
 * for every valid string.
 */
export function murmur3String(key: string, seed = 0): number {
  const len = key.length;
  const blocks = len & ~3;
  let h = seed | 0;
  let i = 0;
  for (; i < blocks; i += 4) {
    const c0 = key.charCodeAt(i);
    const c1 = key.charCodeAt(i + 1);
    const c2 = key.charCodeAt(i + 2);
    const c3 = key.charCodeAt(i + 3);
    if ((c0 | c1 | c2 | c3) > 0x7f) return murmur3_32(utf8.encode(key), seed);
    let k = c0 | (c1 << 8) | (c2 << 16) | (c3 << 24);
    k = Math.imul(k, C1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, C2);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  const rest = len & 3;
  if (rest > 0) {
    let k = 0;
    for (let j = rest - 1; j >= 0; j--) {
      const c = key.charCodeAt(i + j);
      if (c > 0x7f) return murmur3_32(utf8.encode(key), seed);
      k = (k << 8) | c;
    }
    k = Math.imul(k, C1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, C2);
    h ^= k;
  }
  return fmix(h, len);
}

function fmix(hIn: number, len: number): number {
  let h = hIn ^ len;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The slot of a routing key: `murmur3String(key) mod SLOT_COUNT`. */
export function slotOf(key: string): number {
  return murmur3String(key) % SLOT_COUNT;
}
