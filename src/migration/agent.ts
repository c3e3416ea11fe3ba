// The host sidecar (`migsafe agent`): one per host. It runs the VM it holds the lease for and
// checkpoints it (FIC), migrates it to another host's agent on request, receives migrations
// (starts QEMU with -incoming, runs RIC during post-copy), exchanges heartbeats with the other
// side of a migration, and applies V-Recover's recovery rules when that side fails. This file is
// the wiring; the parts:
//   vm-runtime.ts     what is kept per VM, and the host's services on it (QEMU, the checkpoint
//                     loops, the one teardown, fencing, recovery from the store)
//   source.ts         the outgoing migration;  destination.ts, live-recovery.ts  the incoming one
//   decisions.ts      what to do when the source, the destination, the network or the store
//                     fails, in each phase (the table), and the ownership rule
//   src/ha/ownership.ts  renewing, checking and waiting for the leases; fencing
import { writeFileSync, renameSync } from 'node:fs';
import type { Server } from 'node:net';
import type { Redis } from 'ioredis';
import { createRamFile, launchQemu, ramBytesFromArgv, vmPaths } from '../qemu/launch.js';
import { connectRedis, pingExplained } from '../store/redis-server.js';
import { maskSecrets } from '../util/logger.js';
import { describeDurability, settleDurability } from '../store/durability.js';
import { Ownership, killPid } from '../ha/ownership.js';
import { listen, requireTlsOrLoopback, type Peer } from '../ha/peer.js';
import { socketNames, vmRefusal } from '../ha/tls.js';
import { VmHost, type AgentOptions, type VmRuntime } from './vm-runtime.js';
import { Source, type MigrateRequest, type MigrateResult } from './source.js';
import { Destination } from './destination.js';
import { onFencedReclaim, onLeaseTick } from './decisions.js';
import { checkHostName, checkMigrateRequest, checkPrepareRequest } from './protocol.js';

export type { AgentOptions, MigrationMode, Role } from './vm-runtime.js';

/** What a running agent can change without a restart (Agent.retune). */
export type LiveSettings = Partial<
  Pick<AgentOptions, 'intervalMs' | 'maxPages' | 'maxTimeMs' | 'ficBandwidth' | 'compactEvery' | 'ricIntervalMs' | 'ricEvent' | 'ricDirtyPages' | 'hbIntervalMs' | 'hbTimeoutMs'>
>;
export type { MigrateRequest, MigrateResult } from './source.js';

export class Agent {
  private redis: Redis;
  private leaseRedis: Redis;
  /** Fenced VMs whose lease is being asked back (one attempt at a time). */
  private readonly reclaiming = new Set<string>();
  /** Per VM: failed recoveries of a fenced VM in a row, and when the next may start. */
  private readonly retries = new Map<string, number>();
  private readonly retryAt = new Map<string, number>();
  private server?: Server;
  private timers: NodeJS.Timeout[] = [];
  private readonly host: VmHost;
  private readonly ownership: Ownership;
  private readonly source: Source;
  private readonly destination: Destination;

  constructor(readonly o: AgentOptions) {
    checkHostName(o.host, '--host');
    requireTlsOrLoopback(o.listen, o.tls, '--listen');
    this.redis = connectRedis(o.redis, { retry: true, auth: o.redisAuth });
    this.leaseRedis = connectRedis(o.redis, { retry: true, auth: o.redisAuth });
    this.ownership = new Ownership(o.leaseTtlMs);
    this.host = new VmHost(o, this.redis, this.leaseRedis, this.ownership, () => this.writeStatus());
    this.source = new Source(this.host);
    this.destination = new Destination(this.host);
  }

  async start(): Promise<void> {
    await pingExplained(this.redis, maskSecrets(this.o.redis)).catch((e: Error) => {
      throw new Error(`${e.message}; check --redis and that the server runs`);
    });
    const d = await settleDurability(this.redis, this.o.durability ?? { kind: 'auto' }, false, maskSecrets(this.o.redis));
    this.host.durability = d;
    this.o.log.info({ durability: d.kind }, `commits count when ${describeDurability(d)}`);
    await this.host.openGate();
    this.server = await listen(this.o.listen, (p) => this.onPeer(p), (m, p) => this.handle(m, p), { tls: this.o.tls, log: (s) => this.o.log.info(s) });
    this.timers.push(setInterval(() => this.tickLeases(), this.ownership.tickMs));
    const t = this.o.tls;
    const sec = t
      ? `mutual TLS (certificate ${t.files.cert}, CA ${t.files.ca}; obeys ${t.allow.length ? `only ${t.allow.join(', ')}` : 'any certificate the CA signed'})`
      : 'no TLS: the control channel is unauthenticated, so it listens on loopback only and any local user can control it (see --tls-dir)';
    this.o.log.info({ listen: this.o.listen, store: this.o.redis, tls: t !== undefined }, `agent listening on ${this.o.listen} (${sec}), store ${this.o.redis}`);
    this.writeStatus();
  }

  /**
   * Takes on new settings without a restart (SIGHUP): running FIC and RIC loops get their new
   * interval, bounds, bandwidth and triggers at once; heartbeats from the next migration on.
   */
  retune(s: LiveSettings): void {
    for (const [k, v] of Object.entries(s)) if (v !== undefined) (this.o as unknown as Record<string, unknown>)[k] = v;
    const o = this.o;
    for (const r of this.host.vms.values()) {
      const k = r.ckpt;
      if (!k) continue;
      if (k.kind === 'fic') {
        k.retune({ intervalMs: o.intervalMs, maxPages: o.maxPages, maxTimeMs: o.maxTimeMs, bandwidth: o.ficBandwidth, compactEvery: o.compactEvery ?? 0 });
        continue;
      }
      // The dirty-page trigger needs a source that counts (the patched QEMU's bitmap).
      const counts = r.dirty?.watchThreshold !== undefined;
      const threshold = counts ? (o.ricDirtyPages ?? 0) : 0;
      if (r.ric) r.ric.dirtyPagesThreshold = threshold > 0 ? threshold : null;
      k.retune({ intervalMs: o.ricIntervalMs, eventDriven: o.ricEvent, dirtyPagesThreshold: threshold });
    }
    this.writeStatus();
  }

  /**
   * Stops the agent for good (SIGTERM). For each VM: the checkpoint loop finishes the round
   * under way; a VM this host runs and holds the lease of gets one last round (its output after
   * that round stays held by the gate and dies with QEMU, so the checkpoint explains everything
   * the guest was seen to do), then its QEMU is quit, and only then is the lease released: another
   * host may recover the VM from that checkpoint at once instead of waiting for the lease to
   * expire, and never while a copy still runs here. Resolves with the versions left per VM.
   */
  async shutdown(): Promise<{ vm: string; version: number; released: boolean }[]> {
    const out: { vm: string; version: number; released: boolean }[] = [];
    for (const r of this.host.vms.values()) {
      const ckpt = r.ckpt;
      let version = ckpt?.head ?? 0;
      if (ckpt) {
        await ckpt.pause();
        if (r.role === 'owner' && r.lease.token && r.qmp && !r.qmp.isClosed) {
          try {
            version = (await ckpt.roundNow('now')).version;
            this.host.note(r, `shutdown: final checkpoint version ${version}`);
          } catch (e) {
            this.host.note(r, `shutdown: the final round failed (${(e as Error).message}); version ${ckpt.head || 'none'} is the last`);
          }
        }
      }
      await this.host.stop(r);
      const q = r.qemu;
      r.qemu = undefined; // its exit is no news now
      if (q) {
        await r.qmp?.execute('quit').catch(() => {});
        const gone = await Promise.race([q.exited.then(() => true), new Promise<boolean>((res) => setTimeout(() => res(false), 5000))]);
        if (!gone) killPid(q.pid);
        await q.exited;
      }
      this.host.gate?.discard();
      r.qmp?.close();
      r.peer?.close();
      const held = r.lease.token !== 0;
      await r.lease.release();
      if (held) this.host.note(r, `shutdown: QEMU ${q ? `${q.pid} quit` : 'not running here'}; lease released`);
      if (r.role !== 'fenced') this.host.setRole(r, 'none', 'agent stopped');
      out.push({ vm: r.vm, version, released: held });
    }
    await this.close();
    return out;
  }

  async close(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    for (const r of this.host.vms.values()) {
      await this.host.stop(r);
      r.qmp?.close();
      r.peer?.close();
    }
    this.server?.close();
    this.host.gate?.close();
    this.redis.disconnect();
    this.leaseRedis.disconnect();
  }

  // ------------------------------------------------------------------ status

  private writeStatus(): void {
    if (!this.o.statusFile) return;
    const gate = this.host.gate;
    const s = {
      host: this.o.host,
      at: Date.now(),
      vms: [...this.host.vms.values()].map((r) => ({
        vm: r.vm,
        role: r.role,
        pid: r.qemu?.pid ?? 0,
        head: r.ckpt?.head ?? 0,
        ckpt: r.ckpt?.kind ?? null,
        rounds: r.rounds,
        failures: r.ckpt?.failures ?? 0,
        leaseToken: r.lease.token,
        ric: r.ric ?? null,
        events: r.events,
        recoveries: r.recoveries,
        thaws: r.thaws ?? [],
        frozen: r.frozen !== undefined,
        gate: gate?.stats ?? null,
      })),
    };
    const tmp = `${this.o.statusFile}.tmp`;
    writeFileSync(tmp, JSON.stringify(s, null, 1));
    renameSync(tmp, this.o.statusFile);
  }

  // ------------------------------------------------------------------ starting a VM here

  /** Starts a new VM on this host: it must not be owned by anyone. */
  async startVm(vm: string, argv: string[]): Promise<void> {
    const h = this.host;
    const r = h.runtime(vm);
    const ramBytes = ramBytesFromArgv(argv);
    if (!(await r.lease.acquire())) {
      const holder = await r.lease.holder();
      throw new Error(`VM ${vm} is held by ${holder?.host}: not starting a second copy`);
    }
    await r.store.init(argv, ramBytes);
    await r.store.cleanupPending();
    await h.publishAgent(r);
    r.ramBytes = ramBytes;
    r.paths = vmPaths(this.o.runDir, `${vm}.${this.o.host}`);
    createRamFile(r.paths.ram, ramBytes);
    const ft = h.useFt(argv[0]!);
    // The lease rule: a QEMU of an agent's goes with the agent (see LaunchOptions.diesWithMigsafe).
    r.qemu = launchQemu({ argv, ramBytes, paths: r.paths, logFd: h.qemuLog(vm), ft, diesWithMigsafe: true });
    r.qmp = await h.connectQmp(r);
    r.dirty = ft ? await h.openBitmap(r, 'fic') : undefined;
    h.startFic(r, undefined, r.dirty);
    h.setRole(r, 'owner', `started QEMU pid ${r.qemu.pid}; FIC dirty pages from ${r.dirty ? "QEMU's bitmap" : 'a compare of RAM'}`);
  }

  // ------------------------------------------------------------------ the lease

  /** When the lease ticks ran (the longest gap between two, past the period, is how long the event loop stalled). */
  private readonly tickTimes: number[] = [];

  private tickLeases(): void {
    const now = performance.now();
    this.tickTimes.push(now);
    // The gaps over about one lease TTL.
    if (this.tickTimes.length > 8) this.tickTimes.shift();
    for (const r of this.host.vms.values()) {
      if (r.role === 'fenced') {
        this.reclaimFenced(r);
        continue;
      }
      const standing = this.ownership.standing(r.lease);
      const d = onLeaseTick({ role: r.role, hasQemu: r.qemu !== undefined, lease: standing });
      // Renewed unless fenced (which forgets the lease): after the explanation, which reads the renewal under way.
      if (!d.fence) {
        this.ownership.renew(r.lease);
        continue;
      }
      const why = standing === 'unrenewed' ? `${d.why}: ${this.ownership.explainUnrenewed(r.lease, this.loopStallMs())}` : d.why;
      if (d.how === 'freeze') this.host.freeze(r, why);
      else this.host.fence(r, why);
    }
  }

  private loopStallMs(): number {
    let gap = 0;
    for (let i = 1; i < this.tickTimes.length; i++) gap = Math.max(gap, this.tickTimes[i]! - this.tickTimes[i - 1]!);
    return Math.max(0, gap - this.ownership.tickMs);
  }

  /**
   * A VM this side fenced while it could not renew the lease: once the store answers again and
   * nobody took the lease meanwhile (Lease.reclaim: still ours, or free with the epoch
   * unchanged), nobody else runs the VM — its frozen QEMU goes on, or (QEMU gone) it is recovered
   * here from the store, else it stays down for good. A peer that took the lease (a migration's
   * other side) runs it: a frozen QEMU here is killed. A failed recovery is retried with a
   * growing pause, so that a store that keeps refusing does not make the agent spin.
   */
  private reclaimFenced(r: VmRuntime): void {
    if (this.reclaiming.has(r.vm) || performance.now() < (this.retryAt.get(r.vm) ?? 0)) return;
    this.reclaiming.add(r.vm);
    const why = 'the store answers again and nobody took the VM over';
    void (async () => {
      const reclaimed = await r.lease.reclaim();
      if (r.role !== 'fenced') return;
      const hasCheckpoint = reclaimed && !r.frozen ? (await r.store.committed()).length > 0 : false;
      switch (onFencedReclaim({ reclaimed, frozen: r.frozen !== undefined, hasCheckpoint })) {
        case 'thaw':
          return this.host.thaw(r, why);
        case 'recover':
          return this.host.recoverHere(r, why);
        case 'kill-frozen':
          return this.host.fence(r, 'another host took the lease while the store was silent');
        case 'give-up':
          await r.lease.release();
          return this.host.setRole(r, 'none', `${why}, but its QEMU is gone and no checkpoint was ever committed: nothing can bring VM ${r.vm} back — start it again`);
        case 'nothing':
          return;
      }
    })()
      .then(() => {
        if (r.role !== 'owner') return;
        this.retries.delete(r.vm);
        this.retryAt.delete(r.vm);
      })
      .catch((e: Error) => {
        // The store still silent (reclaim timed out): the next tick asks again. A failed
        // recovery (QEMU gone, lease dropped): asked again after a pause that doubles, to 30 s.
        if (r.role === 'fenced') return;
        const n = (this.retries.get(r.vm) ?? 0) + 1;
        this.retries.set(r.vm, n);
        const pauseMs = Math.min(30_000, 500 * 2 ** (n - 1));
        this.retryAt.set(r.vm, performance.now() + pauseMs);
        this.host.fence(r, `recovery failed (${e.message}); trying again in ${(pauseMs / 1000).toFixed(1)} s once the lease can be had`);
      })
      .finally(() => this.reclaiming.delete(r.vm));
  }

  // ------------------------------------------------------------------ control protocol

  private onPeer(p: Peer): void {
    p.on('close', () => {});
  }

  private async handle(m: Record<string, unknown>, p: Peer): Promise<unknown> {
    switch (m.op) {
      case 'status':
        return [...this.host.vms.values()].map((r) => ({ vm: r.vm, role: r.role, pid: r.qemu?.pid ?? 0, head: r.ckpt?.head ?? 0 }));
      case 'migrate': {
        const req = checkMigrateRequest(m);
        this.trustedWith(req.vm, p);
        return this.source.migrate(req, (pr) => p.notify('progress', { ...pr }));
      }
      case 'prepare': {
        const req = checkPrepareRequest(m);
        this.trustedWith(req.vm, p);
        return this.destination.prepare(req, p);
      }
      default:
        throw new Error(`unknown request ${String(m.op)}`);
    }
  }

  /** A request about `vm` is obeyed only from a peer trusted with it (--tls-allow-vm). */
  private trustedWith(vm: string, p: Peer): void {
    const why = vmRefusal(socketNames(p.sock), vm, this.o.tls);
    if (why) {
      this.o.log.warn({ vm, peer: p.remoteAddress }, `refused a request about VM ${vm} from ${p.remoteAddress}: ${why}`);
      throw new Error(why);
    }
  }

  migrate(req: MigrateRequest): Promise<MigrateResult> {
    return this.source.migrate(req);
  }
}
