// The lease of a single-host writer (`run`, `attach`, `recover`): one process per VM id writes
// its checkpoints, and the store refuses the commits of any other (CheckpointStore.fenceWith).
//
// Unlike an agent, which must give the VM up when it cannot renew (a peer may take it over),
// a lone writer whose lease merely expired — the store was away, or failing over, for longer
// than the TTL — takes it back under the same token when the store returns, if nobody held it
// since (Lease.reclaim checks the epoch): no other copy can have started meanwhile without
// holding it. Another holder, even one that has gone again, makes this writer lose.
import { hostname } from 'node:os';
import type { Redis } from 'ioredis';
import type { CheckpointStore } from '../store/checkpoint-store.js';
import { Lease } from './lease.js';
import type { Logger } from '../util/logger.js';

export interface WriterLeaseOptions {
  /** The leases' own connection (a renewal must not wait behind checkpoint writes). */
  redis: Redis;
  store: CheckpointStore;
  ttlMs: number;
  /** Wait this long for a lease held by another writer to expire before refusing (recover). */
  waitMs?: number;
  /** The VM's logger (its lines carry `vm`). */
  log: Logger;
}

/** This process's name as a lease holder. */
export function writerName(): string {
  return `${hostname()}:${process.pid}`;
}

export class WriterLease {
  private timer?: NodeJS.Timeout;
  private renewing = false;
  private lostTo?: string;
  private onLost?: (holder: string) => void;

  private constructor(
    readonly lease: Lease,
    private readonly o: WriterLeaseOptions,
  ) {}

  /** Takes the VM's lease and fences the store's commits with it; refuses when another holds it. */
  static async take(o: WriterLeaseOptions): Promise<WriterLease> {
    const lease = new Lease(o.redis, o.store.vmId, writerName(), o.ttlMs);
    const deadline = performance.now() + (o.waitMs ?? 0);
    let said = false;
    while (!(await lease.acquire())) {
      const h = await lease.holder();
      if (!h) continue; // expired between the two calls: try again at once
      if (performance.now() >= deadline) {
        throw new Error(
          `VM ${o.store.vmId} is being checkpointed by ${h.host} (its lease expires in ${h.ttlMs} ms unless renewed): ` +
            'stop that process first, or give another --vm',
        );
      }
      if (!said) o.log.info({ holder: h.host, ttlMs: h.ttlMs }, `waiting for the lease held by ${h.host} to expire (${h.ttlMs} ms left)`);
      said = true;
      await new Promise((r) => setTimeout(r, 100));
    }
    const w = new WriterLease(lease, o);
    o.store.fenceWith(() => lease.fencing());
    w.timer = setInterval(() => void w.tick(), Math.max(100, Math.floor(o.ttlMs / 4)));
    return w;
  }

  /** Called once if another holder takes the lease. */
  whenLost(f: (holder: string) => void): void {
    this.onLost = f;
    if (this.lostTo) f(this.lostTo);
  }

  private async tick(): Promise<void> {
    if (this.renewing || this.lostTo) return;
    this.renewing = true;
    try {
      if (this.lease.token && (await this.lease.renew())) return;
      // Expired (the store was away) or taken: take it back if nobody held it since.
      if (await this.reclaim()) return;
      const h = await this.lease.holder();
      this.lostTo = h ? h.host : 'another writer, which held the lease after it expired here and has given it up';
      this.onLost?.(this.lostTo);
    } catch {
      /* the store is away: retry on the next tick; commits cannot happen meanwhile either */
    } finally {
      this.renewing = false;
    }
  }

  /**
   * Takes back a lease that ran out while nobody else held it, under the same token (also when
   * the store refused a commit because the lease was free); true when held again.
   */
  async reclaim(): Promise<boolean> {
    if (this.lostTo) return false;
    if (!(await this.lease.reclaim())) return false;
    this.o.log.warn({ leaseToken: this.lease.token }, `the lease had run out (the store was unreachable); taken back, token ${this.lease.token}`);
    return true;
  }

  /** Stops renewing and gives the lease back (if still held). */
  async release(): Promise<void> {
    clearInterval(this.timer);
    await this.lease.release();
  }
}
