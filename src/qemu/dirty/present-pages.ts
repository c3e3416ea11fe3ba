// RIC's dirty source on stock QEMU during post-copy.
//
// At the destination, guest RAM is a shmem file in which pages not yet received from the
// source are HOLES. Reading a hole through a mapping would allocate a zero page in the page
// cache, and QEMU's UFFDIO_COPY for that page would then fail (or the guest would see zeros):
// so we never touch a hole. lseek(SEEK_DATA/SEEK_HOLE) on the RAM file lists the pages that
// are present (received, or written by the guest at the destination); those, and only those,
// are candidates, and the encoder compares them with the shadow (which starts as the final
// FIC image — exactly what the destination started from). A present page that differs from
// the shadow was dirtied at the destination. Holes keep the shadow's content, which is what
// the source will send for them.
//
// The walk is the addon's dataPages (src/kernel/data-pages.ts): lseek in a worker thread, no
// process started while a RIC round's stage 2 holds the VM paused. When the patched QEMU's
// bitmap source is available (qemu-patches/), it replaces this class behind the same
// DirtySource interface.
import { dataPages } from '../../kernel/data-pages.js';
import type { DirtySource, HarvestRequest } from './source.js';

/**
 * Post-copy destination: candidates are the present pages of the RAM file. Once the migration
 * has completed (every page present) `allPresent()` switches it to a full scan.
 */
export class PresentPagesDirtySource implements DirtySource {
  readonly kind = 'present-pages' as const;
  private full = false;
  constructor(private readonly ramPath: string) {}

  allPresent(): void {
    this.full = true;
  }

  /**
   * Not even a zero shadow makes it compare holes: a RIC loop reloads its shadow after a
   * failed round (reloadOnFailure) before it takes the next one.
   */
  async harvest(req: HarvestRequest): Promise<Uint32Array> {
    if (this.full) return req.compareAll();
    return dataPages(this.ramPath);
  }

  /** Nothing held: each harvest opens the file for its walk. */
  async close(): Promise<void> {}
}
