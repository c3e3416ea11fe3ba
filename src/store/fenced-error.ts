// A write refused by the store because the writer no longer holds the VM's lease: another
// owner took it (this writer was paused, partitioned or too slow to renew). Nothing was changed.
export class FencedError extends Error {
  override name = 'FencedError';

  /** Nobody held the lease (it ran out): its last holder may take it back (WriterLease.reclaim). */
  get leaseFree(): boolean {
    return /but the lease is free$/.test(this.message);
  }
}
