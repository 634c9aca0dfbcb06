/**
 * A small seeded PRNG (mulberry32) so that simulations with dropped metrics or synthetic noise
 * are reproducible: the core never uses `Math.random`.
 */

/**
 * Returns a function yielding uniform numbers in [0, 1), fully determined by `seed`.
 *
 * @example
 * ```ts
 * const random = mulberry32(42);
 * random(); // the same number on every run
 * ```
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
