// Where a checkpoint round learns which guest pages changed.
// `scan`: stock QEMU, compare all of guest RAM with the shadow (SIMD, in the addon).
// `bitmap`: patched QEMU hands us its fault-tolerance dirty bitmap (qemu-patches/).

export type DirtySourceKind = 'bitmap' | 'scan';

export interface DirtySource {
  readonly kind: DirtySourceKind;
  /**
   * Pages dirtied since the previous harvest, as candidate page indexes (a superset is fine,
   * a page missing is not), or null when every page must be compared with the shadow.
   * Called with the VM running (stage 1) and again with it paused (stage 2).
   */
  harvest(): Promise<Uint32Array | null>;
  /**
   * The shadow was reloaded from an older committed version (after a failed round): the next
   * harvest must name every page that may differ from it. Sources that name all candidates on
   * every harvest need nothing.
   */
  reset?(): void;
  close(): Promise<void>;
}

/** Stock QEMU: no dirty log, the encoder compares every page with the shadow. */
export class ScanDirtySource implements DirtySource {
  readonly kind = 'scan' as const;
  async harvest(): Promise<Uint32Array | null> {
    return null;
  }
  async close(): Promise<void> {}
}
