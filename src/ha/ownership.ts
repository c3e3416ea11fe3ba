// Ownership of a VM through its store lease (lease.ts): renewing it in the background, telling
// whether it is still safe to run the VM on it, waiting for a free lease, and fencing — killing
// or freezing this side's QEMU and dropping what the gate holds — when it is not.
import type { Lease } from './lease.js';
import type { OutputGate } from './gate.js';

/** Where this side stands with a VM's lease, for the fencing rule. */
export type LeaseStanding = 'none' | 'held' | 'lost' | 'unrenewed';

export class Ownership {
  private renewing = new Set<Lease>();

  constructor(private readonly ttlMs: number) {}

  /** How often leases are renewed and checked. */
  get tickMs(): number {
    return Math.max(100, Math.floor(this.ttlMs / 6));
  }

  /** How long a side waits for a lease held by a peer it lost: until that holder's lease expired, with slack. */
  get takeOverMs(): number {
    return this.ttlMs * 3 + 2000;
  }

  /**
   * Renews a held lease, one renewal at a time per lease. Not awaited: a store that does not
   * answer must not delay the fencing check that follows.
   */
  renew(lease: Lease): void {
    if (!lease.token || this.renewing.has(lease)) return;
    this.renewing.add(lease);
    void lease
      .renew()
      .catch(() => false)
      .finally(() => this.renewing.delete(lease));
  }

  /** The fencing margin: a lease not renewed for ttl − margin is no longer safe to run on. */
  get marginMs(): number {
    return Math.max(500, this.ttlMs / 3);
  }

  standing(lease: Lease): LeaseStanding {
    if (lease.lost) return 'lost';
    if (!lease.token) return 'none';
    return lease.safe(this.marginMs) ? 'held' : 'unrenewed';
  }

  /** Why `lease` went unrenewed, from its renewals and the longest stall of this process's event loop (ms) lately. */
  explainUnrenewed(lease: Lease, stallMs: number): string {
    const now = performance.now();
    return explainUnrenewed({
      sinceAckMs: now - lease.lastRenewed,
      underwayMs: lease.renewSentAt ? now - lease.renewSentAt : undefined,
      lastRoundTripMs: lease.lastRoundTripMs,
      stallMs,
      ttlMs: this.ttlMs,
      marginMs: this.marginMs,
    });
  }

  /** Waits for the lease to be free and takes it; false when another host keeps holding it. */
  async takeLease(lease: Lease, giveUpMs = this.takeOverMs): Promise<boolean> {
    const deadline = performance.now() + giveUpMs;
    while (performance.now() < deadline) {
      try {
        if (await lease.acquire()) return true;
      } catch {
        /* store unreachable: keep trying until the deadline */
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    return false;
  }
}

/**
 * What an operator needs to tell a silent store from a busy agent when a lease went unrenewed:
 * the renewal waiting on the store (a slow or stopped server; with appendfsync always a large
 * write's fsync delays every command behind it), or this process's own event loop stalled (no
 * renewal could be sent or read). Either way a longer --lease-ttl rides it out, at the price of
 * a slower failover.
 */
export function explainUnrenewed(s: { sinceAckMs: number; underwayMs?: number; lastRoundTripMs: number; stallMs: number; ttlMs: number; marginMs: number }): string {
  const ms = (v: number) => `${Math.round(v)} ms`;
  const renewal = s.underwayMs !== undefined ? `a renewal has waited ${ms(s.underwayMs)} for the store` : `the last renewal took ${ms(s.lastRoundTripMs)}`;
  const cause =
    s.stallMs >= s.marginMs / 2
      ? "this agent's event loop stalled"
      : s.underwayMs !== undefined || s.lastRoundTripMs >= s.marginMs / 2
        ? 'the store answered slowly or not at all'
        : 'renewals were failing';
  return (
    `no renewal acknowledged for ${ms(s.sinceAckMs)} (lease ${ms(s.ttlMs)}, fenced at ${ms(s.ttlMs - s.marginMs)}): ${renewal}, ` +
    `the event loop stalled up to ${ms(s.stallMs)}; likely ${cause} (a longer --lease-ttl rides such stalls out, at the price of a slower failover)`
  );
}

/** This side may no longer run the VM: kill its QEMU, drop what it would have sent, forget the lease. Returns the dropped packets. */
export function fence(pid: number | undefined, lease: Lease, gate: OutputGate | undefined): number {
  if (pid) killPid(pid);
  const dropped = gate?.discard() ?? 0;
  lease.token = 0;
  return dropped;
}

/**
 * This side may no longer run the VM for now (the store is silent): stop its QEMU in place
 * (SIGSTOP: it runs no guest code and sends nothing, as if killed, but can go on), drop what
 * it would have sent, forget the lease. Returns the dropped packets.
 */
export function freeze(pid: number, lease: Lease, gate: OutputGate | undefined): number {
  signalPid(pid, 'SIGSTOP');
  const dropped = gate?.discard() ?? 0;
  lease.token = 0;
  return dropped;
}

export function signalPid(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* gone */
  }
}

export function killPid(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* gone */
  }
}
