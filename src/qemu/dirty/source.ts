// Where a checkpoint round learns which guest pages changed. One interface, three sources
// (src/qemu/dirty/), chosen by openDirtySource (open.ts):
//   `scan`: stock QEMU, compare all of guest RAM with the shadow (SIMD, in the addon);
//   `bitmap`: the patched QEMU hands us its fault-tolerance dirty bitmap (qemu-patches/);
//   `present-pages`: a post-copy destination on stock QEMU, only the pages present in the RAM file.

export type DirtySourceKind = 'bitmap' | 'scan' | 'present-pages';

/** What the engine hands a harvest: the state of its shadow, and the compare of all RAM with it. */
export interface HarvestRequest {
  /**
   * The shadow is a zero image (first round, or after a failed one): a log of what changed
   * since some earlier state does not name every page that differs from it.
   */
  readonly shadowZero: boolean;
  /** Indexes of every page where guest RAM and the shadow differ (reads all of RAM). */
  compareAll(): Uint32Array;
}

export interface DirtySource {
  readonly kind: DirtySourceKind;
  /**
   * Candidate page indexes that may differ from the shadow (a superset is fine, a page missing
   * is not): the pages dirtied since the previous harvest, or `req.compareAll()`.
   * Called with the VM running (stage 1) and again with it paused (stage 2).
   */
  harvest(req: HarvestRequest): Promise<Uint32Array>;
  /**
   * The shadow was reloaded from an older committed version (after a failed round): the next
   * harvest must name every page that may differ from it. Sources that name all candidates on
   * every harvest need nothing.
   */
  reset?(): void;
  /**
   * Capability (QEMU counts dirty pages): calls `onReach` whenever `pages` were dirtied since
   * the last harvest (at most once per harvest). 0 turns it off.
   */
  watchThreshold?(pages: number, onReach: () => void): void;
  /** Capability: every page is present from now on (the post-copy migration completed). */
  allPresent?(): void;
  close(): Promise<void>;
}
