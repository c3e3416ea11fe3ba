// The `scan` dirty source (stock QEMU): no dirty log, every round compares all of guest RAM
// with the shadow; the compare alone is cheaper than running the encoder over every page.
import type { DirtySource, HarvestRequest } from './source.js';

export class ScanDirtySource implements DirtySource {
  readonly kind = 'scan' as const;
  async harvest(req: HarvestRequest): Promise<Uint32Array> {
    return req.compareAll();
  }
  async close(): Promise<void> {}
}
