/**
 * Many concurrent callers of one read share one run of it, without ever being answered from
 * before they called: a caller that arrives while a run is under way waits for the next run,
 * which starts when that one ends and serves everyone who arrived meanwhile. Under a burst of N
 * concurrent requests the work runs about twice instead of N times, and read-your-writes holds
 * (a run that began before a caller's call may have missed a change the caller already saw).
 *
 * @example
 * ```ts
 * const checkMap = coalesced(() => slotMaps.currentIfNewer(router.slotMap.version));
 * const newer = await checkMap();
 * ```
 */
export function coalesced<T>(work: () => Promise<T>): () => Promise<T> {
  let running: Promise<T> | undefined;
  let next: Promise<T> | undefined;
  const start = (): Promise<T> => {
    const run = work().finally(() => {
      if (running === run) running = undefined;
    });
    running = run;
    return run;
  };
  return () => {
    if (running === undefined) return start();
    next ??= running.then(
      () => undefined,
      () => undefined,
    ).then(() => {
      next = undefined;
      return start();
    });
    return next;
  };
}
