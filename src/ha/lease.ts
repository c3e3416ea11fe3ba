// Who may run the VM: a lease in the store (its keys and scripts: store/lease-store.ts).
//
// The rule that decides which copy runs after a failure or a partition: ONLY THE HOLDER OF
// THE LEASE RUNS THE VM. The holder renews it every ttl/4; a holder that has not renewed for
// `ttl - margin` (it cannot reach the store) stops its own QEMU (kills or freezes it: ownership.ts) before the lease can expire in
// Redis; another side may take the lease only after it expired (or is handed over). So the
// side that can reach the store wins, and two copies never run at once.
import type { Redis } from 'ioredis';
import { LeaseStore, type LeaseHolder } from '../store/lease-store.js';

export type { LeaseHolder };

export class Lease {
  private readonly store: LeaseStore;
  /** Token while this side holds the lease, else 0. */
  token = 0;
  /** performance.now() of the last successful acquire/renew. */
  lastRenewed = 0;
  /** performance.now() the renewal under way was sent (0: none), and how long the last one took: why a lease went unrenewed. */
  renewSentAt = 0;
  lastRoundTripMs = 0;
  /** A renewal found another holder: this side lost the lease. */
  lost = false;
  /** The token this side held last (kept when a renewal finds the lease gone): what reclaim() asks back. */
  private lastToken = 0;

  /** `redis`: the leases' own connection, so that a renewal never waits behind a checkpoint's bulk writes. */
  constructor(
    redis: Redis,
    readonly vm: string,
    readonly host: string,
    readonly ttlMs: number,
  ) {
    this.store = new LeaseStore(redis, vm);
  }

  /** Every store call gives up after ttl/3: an unreachable store must not stall the fencing. */
  private timed<T>(call: Promise<T>): Promise<T> {
    const limit = Math.max(200, Math.floor(this.ttlMs / 3));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the store did not answer in ${limit} ms`)), limit);
      call.then(
        (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      );
    });
  }

  get value(): string {
    return LeaseStore.value(this.host, this.token);
  }

  /** What this side's commits are fenced with (CheckpointStore.fenceWith): its value while held, else ''. */
  fencing(): string {
    return this.token ? this.value : '';
  }

  /** Takes the lease if it is free (or already ours). */
  async acquire(): Promise<boolean> {
    const t = performance.now();
    const r = await this.timed(this.store.acquire(this.host, this.ttlMs));
    if (r === null) return false;
    this.lost = false;
    this.token = this.lastToken = r;
    this.lastRenewed = t;
    return true;
  }

  /**
   * Takes back the lease this side held last, with the same token, if it ran out while nobody
   * else held it (the store was away longer than the TTL): its commits stay valid. False when
   * another owner had it meanwhile.
   */
  async reclaim(): Promise<boolean> {
    if (!this.lastToken) return false;
    const t = performance.now();
    if (!(await this.timed(this.store.reclaim(LeaseStore.value(this.host, this.lastToken), this.lastToken, this.ttlMs)))) return false;
    this.lost = false;
    this.token = this.lastToken;
    this.lastRenewed = t;
    return true;
  }

  async renew(): Promise<boolean> {
    if (!this.token) return false;
    const t = (this.renewSentAt = performance.now());
    const renewed = await this.timed(this.store.renew(this.value, this.ttlMs)).finally(() => {
      this.lastRoundTripMs = performance.now() - t;
      this.renewSentAt = 0;
    });
    if (renewed) {
      this.lastRenewed = t;
      return true;
    }
    this.token = 0;
    this.lost = true;
    return false;
  }

  /** Gives the lease to `to` (this side must hold it). Returns the new token or 0. */
  async handOver(to: string): Promise<number> {
    const r = await this.timed(this.store.handOver(this.value, to, this.ttlMs));
    if (r === null) return 0;
    this.token = this.lastToken = 0;
    return r;
  }

  async release(): Promise<void> {
    if (!this.token) return;
    await this.timed(this.store.release(this.value)).catch(() => {});
    this.token = this.lastToken = 0;
  }

  /** Adopts a lease handed to this side (its token). */
  adopt(token: number): void {
    this.lost = false;
    this.token = this.lastToken = token;
    this.lastRenewed = performance.now();
  }

  /** True while this side may still assume it holds the lease (no renewal for < ttl - margin). */
  safe(marginMs: number): boolean {
    return this.token !== 0 && performance.now() - this.lastRenewed < this.ttlMs - marginMs;
  }

  holder(): Promise<LeaseHolder | null> {
    return this.store.holder();
  }
}
