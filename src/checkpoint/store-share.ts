// One agent, many VMs, one checkpoint pipeline: each VM's rounds get an equal share of what
// the pipeline (this host's encoders and the store) has been measured to carry, so that when it
// falls behind, the intervals stretch — V-Recover's bandwidth-adaptive interval — instead of
// every VM's rounds queuing at the store and each lasting longer. One VM alone is not held back.

/** Share of the measured throughput all VMs together may keep busy (the rest is headroom). */
export const SHARE_UTILISATION = 0.8;
/** A VM counts as checkpointing while it committed a round this recently. */
const ACTIVE_MS = 10_000;

export class StoreShare {
  /** Bytes stored per ms of a round (start → commit), smoothed over rounds of every VM. */
  private rate = 0;
  private readonly seen = new Map<string, number>();

  constructor(
    private readonly utilisation = SHARE_UTILISATION,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** A round of `vm` stored `bytes` in `ms` (from its start to its commit). */
  record(vm: string, bytes: number, ms: number): void {
    this.seen.set(vm, this.now());
    if (!(bytes > 0 && ms > 0)) return;
    const r = bytes / ms;
    this.rate = this.rate ? 0.7 * this.rate + 0.3 * r : r;
  }

  /** VMs that committed within ACTIVE_MS. */
  active(): number {
    const t = this.now();
    let n = 0;
    for (const [vm, at] of this.seen) {
      if (t - at <= ACTIVE_MS) n++;
      else this.seen.delete(vm);
    }
    return n;
  }

  /**
   * The least time from the start of a round that stored `bytes` to the next round of the same
   * VM: its bytes at 1/N of the utilisable rate, but at most N intervals (a first, full
   * checkpoint must not silence a VM for minutes: its next rounds are small). 0 with fewer than
   * two active VMs.
   */
  minGapMs(bytes: number, intervalMs: number): number {
    const n = this.active();
    if (n < 2 || this.rate <= 0 || bytes <= 0) return 0;
    return Math.min((bytes * n) / (this.rate * this.utilisation), n * intervalMs);
  }

  forget(vm: string): void {
    this.seen.delete(vm);
  }
}
