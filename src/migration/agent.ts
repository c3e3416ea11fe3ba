// The host sidecar (`migsafe agent`): one per host. It runs the VM it holds the lease for and
// checkpoints it (FIC), migrates it to another host's agent on request, receives migrations
// (starts QEMU with -incoming, runs RIC during post-copy), exchanges heartbeats with the other
// side of a migration, and applies V-Recover's recovery rules when that side fails:
//
//   phase                      failed side      what happens
//   pre-copy                   destination/net  the source cancels the migration and runs on
//   pre-copy                   source           the destination recovers from the last FIC version
//   post-copy (VM at dest.)    source           patched QEMU: LIVE — the destination's QEMU gets the
//                                               pages the source never sent from the final FIC image
//                                               (migsafe-postcopy-fill) and runs on (recoverLive);
//                                               stock QEMU / a failed fill: it recovers from the newest
//                                               version (the last RIC one; holes come from FIC)
//   post-copy                  destination/net  the source recovers from the last RIC version
//
// and over all of it the ownership rule (src/ha/lease.ts): only the holder of the store lease
// runs the VM; a side that cannot renew it kills its own QEMU; a side takes a lease only when
// it is free. After a partition the side that reaches the store is the one that runs.
import { openSync, writeFileSync, renameSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { Server } from 'node:net';
import type { Redis } from 'ioredis';
import { createRamFile, launchQemu, ramBytesFromArgv, vmPaths, RAM_BACKEND_ID, type LaunchedQemu, type VmPaths } from '../qemu/launch.js';
import { QmpClient, type QmpEvent } from '../qemu/qmp.js';
import type { DirtySource } from '../qemu/dirty/source.js';
import { openDirtySource, useFt } from '../qemu/dirty/open.js';
import { CheckpointStore } from '../store/checkpoint-store.js';
import { connectRedis } from '../store/redis-server.js';
import { loadImage, planRestore } from '../store/reader.js';
import type { CodecChoice } from '../store/frame.js';
import { recoverVm } from '../recovery/recover.js';
import { Lease } from '../ha/lease.js';
import { OutputGate } from '../ha/gate.js';
import { listen, Peer, parseAddr } from '../ha/peer.js';
import { Checkpointer } from '../checkpoint/checkpointer.js';

export type MigrationMode = 'precopy' | 'postcopy' | 'hybrid';

export interface AgentOptions {
  host: string;
  listen: string;
  redis: string;
  runDir: string;
  intervalMs: number;
  maxPages: number;
  maxTimeMs: number;
  codec: CodecChoice;
  /** FIC bandwidth budget, bytes/s (0: none). */
  ficBandwidth: number;
  /** Fold old versions into the base once more than 2×K are stored (0: never). */
  compactEvery?: number;
  ricIntervalMs: number;
  ricEvent: boolean;
  /**
   * RIC: also start a round once this many pages were dirtied since the last harvest (0: off).
   * Needs the patched QEMU's dirty count (bitmap source); without it rounds are periodic and on packets.
   */
  ricDirtyPages?: number;
  /** Dirty pages from the patched QEMU's bitmap (`auto`: when the QEMU binary has migsafe-ft). */
  dirtySource?: 'auto' | 'bitmap' | 'scan';
  hbIntervalMs: number;
  hbTimeoutMs: number;
  leaseTtlMs: number;
  /** Output commit through the gate (default on). */
  gate: boolean;
  /** Turn checkpointing off (benchmark baseline). */
  noCheckpoint?: boolean;
  statusFile?: string;
  log: (msg: string) => void;
}

export type Role = 'none' | 'owner' | 'migrating-src' | 'postcopy-src' | 'incoming' | 'postcopy-dst' | 'recovering' | 'fenced';

interface VmRuntime {
  vm: string;
  store: CheckpointStore;
  lease: Lease;
  qemu?: LaunchedQemu;
  qmp?: QmpClient;
  paths?: VmPaths;
  ramBytes: number;
  ckpt?: Checkpointer;
  /** The checkpoint loop's dirty source when it is not a plain compare: QEMU's bitmap (migsafe-ft), or SEEK_DATA at a post-copy destination. */
  dirty?: DirtySource;
  /** What RIC runs on here: source and triggers (shown in the status). */
  ric?: { dirtySource: 'bitmap' | 'present-pages'; dirtyPagesThreshold: number | null; note?: string };
  role: Role;
  peer?: Peer;
  mode?: MigrationMode;
  /** Version the destination starts from (the final FIC version). */
  finalVersion?: number;
  /** The source said the migration completed: its going away is no failure. */
  migrationDone?: boolean;
  /** The final FIC image, loaded once per incoming post-copy (startRic, a live recovery). */
  finalImageLoad?: { finalVersion: number | undefined; p: Promise<{ image: Buffer; version: number }> };
  /** Incoming side: the last MIGRATION status QEMU reported here. */
  incomingStatus?: string;
  /** Incoming side: QEMU has migsafe-postcopy-fill (patched) and QMP runs it out of band. */
  canFill?: boolean;
  /** Incoming migrations so far: a late notice of an old one must not touch the current one. */
  gen?: number;
  events: string[];
  /** Statistics of every checkpoint round this host took for the VM. */
  rounds: import('../checkpoint/checkpointer.js').RoundStat[];
  recoveries: { at: number; fromVersion: number; ms: number; why: string }[];
}

export interface MigrateRequest {
  vm: string;
  to: string;
  mode: MigrationMode;
  /** QEMU max-bandwidth for the migration, bytes/s. */
  maxBandwidth?: number;
  /** QEMU max-postcopy-bandwidth, bytes/s. */
  postcopyBandwidth?: number;
  /** hybrid: switch to post-copy after this many ms of pre-copy (default: after the first pass). */
  postcopyAfterMs?: number;
}

export interface MigrateResult {
  vm: string;
  mode: MigrationMode;
  status: 'completed' | 'failed' | 'cancelled' | 'recovered-at-source';
  totalMs: number;
  downtimeMs?: number;
  /** QEMU's own total-time of the migration. */
  qemuTotalMs?: number;
  finalFicVersion?: number;
  finalFicPauseMs?: number;
  error?: string;
}

export class Agent {
  private redis: Redis;
  private server?: Server;
  private gate?: OutputGate;
  private vms = new Map<string, VmRuntime>();
  private timers: NodeJS.Timeout[] = [];

  constructor(readonly o: AgentOptions) {
    this.redis = connectRedis(o.redis, { retry: true });
  }

  async start(): Promise<void> {
    if (this.o.gate) this.gate = await OutputGate.open();
    this.server = await listen(this.o.listen, (p) => this.onPeer(p), (m, p) => this.handle(m, p));
    this.timers.push(setInterval(() => void this.tickLeases(), Math.max(100, Math.floor(this.o.leaseTtlMs / 6))));
    this.o.log(`${this.o.host}: agent listening on ${this.o.listen}, store ${this.o.redis}`);
    this.writeStatus();
  }

  async close(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    for (const r of this.vms.values()) {
      await r.ckpt?.stop().catch(() => {});
      r.qmp?.close();
      r.peer?.close();
    }
    this.server?.close();
    this.gate?.close();
    this.redis.disconnect();
  }

  // ------------------------------------------------------------------ status

  private writeStatus(): void {
    if (!this.o.statusFile) return;
    const s = {
      host: this.o.host,
      at: Date.now(),
      vms: [...this.vms.values()].map((r) => ({
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
        gate: this.gate?.stats ?? null,
      })),
    };
    const tmp = `${this.o.statusFile}.tmp`;
    writeFileSync(tmp, JSON.stringify(s, null, 1));
    renameSync(tmp, this.o.statusFile);
  }

  private note(r: VmRuntime, msg: string): void {
    r.events.push(`${Date.now()} ${msg}`);
    this.o.log(`${this.o.host}: ${r.vm}: ${msg}`);
    this.writeStatus();
  }

  private setRole(r: VmRuntime, role: Role, why: string): void {
    r.role = role;
    this.note(r, `role ${role} (${why})`);
  }

  private runtime(vm: string): VmRuntime {
    let r = this.vms.get(vm);
    if (!r) {
      r = {
        vm,
        store: new CheckpointStore(this.redis, vm),
        lease: new Lease(this.redis, vm, this.o.host, this.o.leaseTtlMs),
        ramBytes: 0,
        role: 'none',
        events: [],
        rounds: [],
        recoveries: [],
      };
      this.vms.set(vm, r);
    }
    return r;
  }

  // ------------------------------------------------------------------ starting a VM here

  /** Starts a new VM on this host: it must not be owned by anyone. */
  async startVm(vm: string, argv: string[]): Promise<void> {
    const r = this.runtime(vm);
    const ramBytes = ramBytesFromArgv(argv);
    if (!(await r.lease.acquire())) {
      const h = await r.lease.holder();
      throw new Error(`VM ${vm} is held by ${h?.host}: not starting a second copy`);
    }
    await r.store.init(argv, ramBytes);
    await r.store.cleanupPending();
    await this.redis.set(`migsafe:{${vm}}:agent`, this.o.listen);
    r.ramBytes = ramBytes;
    r.paths = vmPaths(this.o.runDir, `${vm}.${this.o.host}`);
    createRamFile(r.paths.ram, ramBytes);
    const ft = this.useFt(argv[0]!);
    r.qemu = launchQemu({ argv, ramBytes, paths: r.paths, logFd: this.qemuLog(vm), ft });
    r.qmp = await this.connectQmp(r);
    r.dirty = ft ? await this.ficBitmap(r) : undefined;
    this.startFic(r, undefined, r.dirty);
    this.setRole(r, 'owner', `started QEMU pid ${r.qemu.pid}; FIC dirty pages from ${r.dirty ? "QEMU's bitmap" : 'a compare of RAM'}`);
  }

  /**
   * FIC's dirty source on the patched QEMU: its bitmap (tracking starts now, after the guest
   * ran: the first round compares all of RAM, then only what the bitmap names).
   */
  private async ficBitmap(r: VmRuntime): Promise<DirtySource | undefined> {
    try {
      return await openDirtySource({ ftSocket: r.paths!.ft, ramPath: r.paths!.ram, ramBytes: r.ramBytes });
    } catch (e) {
      this.note(r, `migsafe-ft unusable (${(e as Error).message}): FIC compares all of RAM`);
      return undefined;
    }
  }

  private qemuLog(vm: string): number {
    return openSync(join(this.o.runDir, `${vm}.${this.o.host}.qemu.log`), 'a');
  }

  private async connectQmp(r: VmRuntime, opts: { oob?: boolean } = {}): Promise<QmpClient> {
    const q = r.qemu!;
    const qmp = await Promise.race([
      QmpClient.connect(r.paths!.qmp, 30_000, opts),
      q.exited.then((c) => {
        throw new Error(`QEMU exited (${c}) at start: see ${this.o.runDir}/${r.vm}.${this.o.host}.qemu.log`);
      }),
    ]);
    const myQemu = q;
    void q.exited.then((c) => {
      if (r.qemu === myQemu) this.onQemuExit(r, c);
    });
    return qmp;
  }

  private onQemuExit(r: VmRuntime, code: number | string): void {
    this.note(r, `QEMU exited (${code})`);
    void r.ckpt?.stop();
    r.ckpt = undefined;
    r.qemu = undefined;
    if (r.role === 'owner') this.setRole(r, 'none', 'QEMU gone');
  }

  /** Whether to give this QEMU binary the migsafe-ft object (the patched QEMU's dirty bitmap). */
  private useFt(bin: string): boolean {
    return !this.o.noCheckpoint && useFt(this.o.dirtySource ?? 'auto', bin);
  }

  /** What a checkpoint loop reads and writes for the VM: its store, QMP, RAM file and device-state file. */
  private vmIo(r: VmRuntime) {
    return { store: r.store, qmp: r.qmp!, ramPath: r.paths!.ram, ramBytes: r.ramBytes, deviceStatePath: r.paths!.deviceState };
  }

  private startFic(r: VmRuntime, resumeFrom?: { image: Buffer; version: number }, dirty?: DirtySource): void {
    if (this.o.noCheckpoint) {
      if (this.gate) this.gate.holding = false;
      return;
    }
    if (this.gate) this.gate.holding = this.o.gate;
    r.ckpt = new Checkpointer({
      kind: 'fic',
      ...this.vmIo(r),
      dirty,
      codec: this.o.codec,
      intervalMs: this.o.intervalMs,
      maxPages: this.o.maxPages,
      maxTimeMs: this.o.maxTimeMs,
      bandwidth: this.o.ficBandwidth,
      gate: this.gate,
      resumeFrom,
      compactEvery: this.o.compactEvery ?? 0,
      log: (m) => this.o.log(`${this.o.host}: ${r.vm}: ${m}`),
      onRound: () => this.writeStatus(),
      rounds: r.rounds,
    });
    r.ckpt.start();
  }

  // ------------------------------------------------------------------ the lease

  private renewing = new Set<string>();

  private async tickLeases(): Promise<void> {
    for (const r of this.vms.values()) {
      if (r.lease.token && !this.renewing.has(r.vm)) {
        // Not awaited: a store that does not answer must not delay the fencing check below.
        this.renewing.add(r.vm);
        void r.lease
          .renew()
          .catch(() => false)
          .finally(() => this.renewing.delete(r.vm));
      }
      const running = r.qemu && ['owner', 'postcopy-dst', 'migrating-src'].includes(r.role);
      if (!running) continue;
      if (r.lease.lost) this.fence(r, 'the lease is held by another host');
      else if (r.lease.token && !r.lease.safe(Math.max(500, this.o.leaseTtlMs / 3))) {
        this.fence(r, 'cannot reach the store to renew the lease');
      }
    }
  }

  /** This side may no longer run the VM: kill its QEMU, drop what it would have sent. */
  private fence(r: VmRuntime, why: string): void {
    const pid = r.qemu?.pid;
    if (pid) killPid(pid);
    const dropped = this.gate?.discard() ?? 0;
    void r.ckpt?.stop();
    r.ckpt = undefined;
    void r.dirty?.close();
    r.dirty = undefined;
    r.qemu = undefined;
    r.lease.token = 0;
    this.setRole(r, 'fenced', `${why}: QEMU ${pid} killed, ${dropped} held packet(s) dropped`);
  }

  /** Waits for the lease to be free and takes it; null when another host keeps holding it. */
  private async takeLease(r: VmRuntime, giveUpMs: number): Promise<boolean> {
    const deadline = performance.now() + giveUpMs;
    while (performance.now() < deadline) {
      try {
        if (await r.lease.acquire()) return true;
      } catch {
        /* store unreachable: keep trying until the deadline */
      }
      await sleepMs(100);
    }
    return false;
  }

  // ------------------------------------------------------------------ recovery

  private async recoverHere(r: VmRuntime, why: string): Promise<void> {
    const t0 = performance.now();
    this.setRole(r, 'recovering', why);
    if (r.qemu) killPid(r.qemu.pid);
    await r.ckpt?.stop().catch(() => {});
    r.ckpt = undefined;
    void r.dirty?.close();
    r.dirty = undefined;
    r.qmp?.close();
    r.qemu = undefined;
    r.peer?.close();
    this.gate?.discard();
    await r.store.cleanupPending().catch(() => []);
    const paths = vmPaths(this.o.runDir, `${r.vm}.${this.o.host}.r${Date.now()}`);
    const rec = await recoverVm({ store: r.store, paths, logFd: this.qemuLog(r.vm), ft: (bin) => this.useFt(bin) });
    r.paths = paths;
    r.qemu = rec.qemu;
    r.qmp = rec.qmp;
    r.ramBytes = rec.plan.vm.ramBytes;
    r.dirty = rec.ft ? await this.ficBitmap(r) : undefined;
    const myQemu = rec.qemu;
    void rec.qemu.exited.then((c) => {
      if (r.qemu === myQemu) this.onQemuExit(r, c);
    });
    await this.redis.set(`migsafe:{${r.vm}}:agent`, this.o.listen).catch(() => {});
    this.startFic(r, { image: rec.image, version: rec.plan.target.version }, r.dirty);
    const ms = performance.now() - t0;
    r.recoveries.push({ at: Date.now(), fromVersion: rec.plan.target.version, ms, why });
    this.setRole(r, 'owner', `recovered from version ${rec.plan.target.version} in ${ms.toFixed(0)} ms, QEMU pid ${rec.qemu.pid}`);
  }

  // ------------------------------------------------------------------ control protocol

  private onPeer(p: Peer): void {
    p.on('close', () => {});
  }

  private async handle(m: Record<string, unknown>, p: Peer): Promise<unknown> {
    switch (m.op) {
      case 'status':
        return [...this.vms.values()].map((r) => ({ vm: r.vm, role: r.role, pid: r.qemu?.pid ?? 0, head: r.ckpt?.head ?? 0 }));
      case 'migrate':
        return this.migrate(m as unknown as MigrateRequest);
      case 'prepare':
        return this.prepare(m as unknown as PrepareRequest, p);
      default:
        throw new Error(`unknown request ${String(m.op)}`);
    }
  }

  // ------------------------------------------------------------------ source side

  async migrate(req: MigrateRequest): Promise<MigrateResult> {
    const r = this.vms.get(req.vm);
    if (!r || r.role !== 'owner' || !r.qmp) throw new Error(`VM ${req.vm} does not run on ${this.o.host}`);
    const mode = req.mode ?? 'precopy';
    const post = mode !== 'precopy';
    const t0 = performance.now();
    const peer = await Peer.connect(req.to, undefined, 5000);
    r.peer = peer;
    r.mode = mode;
    const qmp = r.qmp;
    if (r.ckpt) r.ckpt.compactionPaused = true;
    peer.startHeartbeat({ intervalMs: this.o.hbIntervalMs, timeoutMs: this.o.hbTimeoutMs });
    const prep = await peer.request<{ uri: string; host: string }>('prepare', { vm: r.vm, mode, from: this.o.host }, 60_000);
    this.setRole(r, 'migrating-src', `migrating to ${prep.host} (${mode}) via ${prep.uri}`);
    const caps = [
      { capability: 'events', state: true },
      { capability: 'pause-before-switchover', state: true },
      { capability: 'postcopy-ram', state: post },
    ];
    await qmp.execute('migrate-set-capabilities', { capabilities: caps });
    const params: Record<string, unknown> = {};
    if (req.maxBandwidth) params['max-bandwidth'] = req.maxBandwidth;
    if (req.postcopyBandwidth) params['max-postcopy-bandwidth'] = req.postcopyBandwidth;
    if (Object.keys(params).length) await qmp.execute('migrate-set-parameters', params);

    let switchedOver = false;
    let finalVersion: number | undefined;
    let finalPause: number | undefined;
    let settled = false;
    let completed = false;
    return await new Promise<MigrateResult>((resolve) => {
      const finish = (res: Omit<MigrateResult, 'vm' | 'mode' | 'totalMs'>) => {
        if (settled) return;
        settled = true;
        qmp.off('event', onEvent);
        resolve({ vm: r.vm, mode, totalMs: performance.now() - t0, finalFicVersion: finalVersion, finalFicPauseMs: finalPause, ...res });
      };
      const onEvent = (e: QmpEvent) => {
        if (e.event === 'MIGRATION_PASS' && mode === 'hybrid' && req.postcopyAfterMs === undefined && Number(e.data?.pass) >= 2) {
          void qmp.execute('migrate-start-postcopy').catch(() => {});
        }
        if (e.event !== 'MIGRATION') return;
        const status = String(e.data?.status);
        this.note(r, `source migration status ${status}`);
        if (status === 'active' && mode === 'postcopy') void qmp.execute('migrate-start-postcopy').catch(() => {});
        if (status === 'active' && mode === 'hybrid' && req.postcopyAfterMs !== undefined) {
          setTimeout(() => void qmp.execute('migrate-start-postcopy').catch(() => {}), req.postcopyAfterMs);
        }
        if (status === 'pre-switchover') void onSwitchover();
        if (status === 'postcopy-active') this.setRole(r, 'postcopy-src', 'the VM runs at the destination; pages still here');
        if (status === 'completed') void onCompleted();
        if (status === 'failed' || status === 'cancelled') void onFailed(status);
      };
      const onSwitchover = async () => {
        // The VM is stopped by the migration: the final, consistent FIC checkpoint.
        try {
          if (r.ckpt) {
            await r.ckpt.pause();
            // A round under way when the migration stopped the VM, which left it stopped, is
            // already the final consistent checkpoint (its stage 2 ran with the VM stopped for good).
            const last = r.ckpt.lastRound;
            let m = last && last.at > t0 && !last.resumed && last.endStatus === 'finish-migrate' && last.meta.version === r.ckpt.head ? last.meta : undefined;
            if (m) this.note(r, `the FIC round under way ended with the VM stopped by the migration: version ${m.version} is the final checkpoint`);
            for (let i = 0; !m; i++) {
              try {
                // The VM is stopped: one stage, one compare of RAM.
                m = await r.ckpt.roundNow('now', { vmStopped: true });
              } catch (e) {
                if (i >= 3) throw e;
                await sleepMs(300);
              }
            }
            finalVersion = m.version;
            finalPause = m.pauseMs;
          } else {
            finalVersion = await r.store.head().catch(() => 0);
          }
          const token = await r.lease.handOver(prep.host);
          if (!token) throw new Error('lost the lease before switchover');
          peer.notify('lease', { token, version: finalVersion });
          switchedOver = true;
          this.note(r, `final FIC version ${finalVersion}; lease handed to ${prep.host} (token ${token}); switching over`);
          await qmp.execute('migrate-continue', { state: 'pre-switchover' });
        } catch (e) {
          this.note(r, `switchover refused: ${(e as Error).message}; cancelling the migration`);
          await qmp.execute('migrate_cancel').catch(() => {});
        }
      };
      const onCompleted = async () => {
        completed = true;
        const info = await qmp
          .execute<{ downtime?: number; 'total-time'?: number }>('query-migrate')
          .catch(() => ({}) as { downtime?: number; 'total-time'?: number });
        await r.ckpt?.stop().catch(() => {});
        r.ckpt = undefined;
        void r.dirty?.close();
        r.dirty = undefined;
        peer.notify('done');
        setTimeout(() => peer.close(), 2000);
        r.peer = undefined;
        await qmp.execute('quit').catch(() => {});
        r.qemu = undefined;
        this.setRole(r, 'none', 'migration completed; the VM runs at the destination');
        finish({ status: 'completed', downtimeMs: info.downtime, qemuTotalMs: info['total-time'] });
      };
      const onFailed = async (status: string) => {
        if (settled) return;
        if (!switchedOver) {
          // Pre-copy (or before the switch): the source still has the whole VM and runs on.
          const st = await qmp.execute<{ status: string }>('query-status').catch(() => ({ status: '?' }));
          if (st.status !== 'running') await qmp.execute('cont').catch(() => {});
          r.ckpt?.resume();
          if (r.ckpt) r.ckpt.compactionPaused = false;
          peer.close();
          r.peer = undefined;
          this.setRole(r, 'owner', `migration ${status}: the VM keeps running here`);
          finish({ status: status as 'failed' | 'cancelled', error: `migration ${status}` });
          return;
        }
        if (mode === 'precopy') {
          // After the switchover the destination holds the lease; wait for it and run on here.
          await onPeerLost(`migration ${status} after switchover`);
        }
      };
      const onPeerLost = async (why: string) => {
        if (settled || completed) return;
        if (!switchedOver) {
          this.note(r, `destination lost (${why}) during pre-copy: cancelling, the VM keeps running here`);
          await qmp.execute('migrate_cancel').catch(() => {});
          // onFailed('cancelled') finishes.
          setTimeout(() => void onFailed('cancelled'), 3000);
          return;
        }
        // Post-copy (or the end of pre-copy): the VM may only run where the lease is.
        this.note(r, `destination lost (${why}) after switchover: waiting for the lease`);
        const got = await this.takeLease(r, this.o.leaseTtlMs * 3 + 2000);
        if (settled || completed) return;
        if (!got) {
          if (r.qemu) killPid(r.qemu.pid);
          r.qemu = undefined;
          this.setRole(r, 'none', 'the destination keeps the lease: it runs the VM');
          finish({ status: 'failed', error: `destination unreachable (${why}) but it holds the lease` });
          return;
        }
        try {
          await this.recoverHere(r, `destination or network failed in ${mode} (${why})`);
          finish({ status: 'recovered-at-source', error: why });
        } catch (e) {
          this.setRole(r, 'none', `recovery failed: ${(e as Error).message}`);
          finish({ status: 'failed', error: `recovery failed: ${(e as Error).message}` });
        }
      };
      qmp.on('event', onEvent);
      peer.once('suspect', (why: string) => void onPeerLost(String(why)));
      r.qemu?.exited.then(() => finish({ status: 'failed', error: 'source QEMU exited' }));
      void qmp.execute('migrate', { uri: prep.uri }).catch((e: Error) => {
        this.note(r, `migrate refused: ${e.message}`);
        void onFailed('failed');
      });
    });
  }

  // ------------------------------------------------------------------ destination side

  private async prepare(req: PrepareRequest, p: Peer): Promise<{ uri: string; host: string }> {
    const r = this.runtime(req.vm);
    if (r.qemu) throw new Error(`VM ${req.vm} already has a QEMU on ${this.o.host}`);
    const vm = await r.store.vm();
    if (!vm) throw new Error(`no VM ${req.vm} in the store`);
    r.ramBytes = vm.ramBytes;
    r.mode = req.mode;
    r.finalVersion = undefined;
    r.migrationDone = false;
    void r.dirty?.close();
    r.dirty = undefined;
    r.ric = undefined;
    r.paths = vmPaths(this.o.runDir, `${req.vm}.${this.o.host}.in${Date.now()}`);
    createRamFile(r.paths.ram, vm.ramBytes);
    const ft = this.useFt(vm.argv[0]!);
    r.qemu = launchQemu({ argv: [...vm.argv, '-incoming', 'defer'], ramBytes: vm.ramBytes, paths: r.paths, logFd: this.qemuLog(req.vm), cwd: vm.cwd, ft });
    // Out-of-band QMP: migsafe-postcopy-fill must run even while the main loop waits for a page
    // the dead source will never send (a RIC round's `stop` waits for a blocked vCPU).
    r.qmp = await this.connectQmp(r, { oob: true });
    const qmp = r.qmp;
    r.incomingStatus = undefined;
    r.canFill = false;
    r.finalImageLoad = undefined;
    if (qmp.oob && req.mode !== 'precopy') {
      const cmds = await qmp.execute<{ name: string }[]>('query-commands').catch(() => []);
      r.canFill = cmds.some((c) => c.name === 'migsafe-postcopy-fill');
    }
    if (ft) {
      // Dirty tracking from before the guest runs here: the destination starts from the final FIC
      // image, so the bitmap names exactly the pages the guest writes here (all present: a hole is
      // never read), and the first RIC round is incremental too.
      try {
        r.dirty = await openDirtySource({ ftSocket: r.paths.ft, ramPath: r.paths.ram, ramBytes: vm.ramBytes, trackedFromStart: true });
      } catch (e) {
        this.note(r, `migsafe-ft unusable (${(e as Error).message}): RIC falls back to the SEEK_DATA source`);
      }
    }
    await qmp.execute('migrate-set-capabilities', {
      capabilities: [
        { capability: 'events', state: true },
        { capability: 'postcopy-ram', state: req.mode !== 'precopy' },
      ],
    });
    const { host } = parseAddr(this.o.listen);
    const port = parseAddr(this.o.listen).port + 1;
    const uri = `tcp:${host}:${port}`;
    await qmp.execute('migrate-incoming', { uri });
    r.peer = p;
    this.setRole(r, 'incoming', `QEMU pid ${r.qemu.pid} waits for ${req.vm} from ${req.from} on ${uri}`);
    p.startHeartbeat({ intervalMs: this.o.hbIntervalMs, timeoutMs: this.o.hbTimeoutMs });
    p.on('event', (ev: string, data: Record<string, unknown>) => {
      if (ev === 'lease') {
        r.lease.adopt(Number(data.token));
        r.finalVersion = Number(data.version);
        this.note(r, `lease handed over (token ${String(data.token)}), final FIC version ${String(data.version)}`);
      }
      if (ev === 'done') r.migrationDone = true;
    });
    const onEvent = (e: QmpEvent) => {
      if (e.event === 'RESUME') void onResume();
      if (e.event === 'MIGRATION') {
        const s = String(e.data?.status);
        r.incomingStatus = s;
        this.note(r, `destination migration status ${s}`);
        if (s === 'completed') void onCompleted();
        if (s === 'failed' && r.role === 'incoming') {
          // The stream broke before the VM ran here; the peer-loss rule decides.
          if (!p.closed) p.close();
        }
      }
    };
    let resumed = false;
    let ricStarting: Promise<void> = Promise.resolve();
    const onResume = async () => {
      if (resumed) return;
      resumed = true;
      if (req.mode === 'precopy') return; // completion follows at once
      this.setRole(r, 'postcopy-dst', 'the VM resumed here during post-copy; RIC on');
      ricStarting = this.startRic(r).catch((e: Error) => this.note(r, `RIC could not start: ${e.message}`));
      await ricStarting;
    };
    const onCompleted = async () => {
      r.migrationDone = true;
      qmp.off('event', onEvent);
      p.stopHeartbeat();
      p.close();
      r.peer = undefined;
      // RIC may still be loading its shadow (a short post-copy): wait, so that one checkpoint
      // loop runs here, never a RIC and a FIC loop side by side.
      await ricStarting;
      if (r.ckpt && r.dirty) {
        r.ckpt.becomeFic();
      } else if (!r.ckpt) {
        await this.startFicFromFinal(r);
      }
      await this.redis.set(`migsafe:{${r.vm}}:agent`, this.o.listen).catch(() => {});
      r.finalImageLoad = undefined;
      this.setRole(r, 'owner', `migration completed; ${r.ckpt ? 'FIC' : 'no checkpointing'} here`);
    };
    qmp.on('event', onEvent);
    const gen = (r.gen = (r.gen ?? 0) + 1);
    p.once('suspect', (why: string) => {
      if (r.gen === gen) void this.onSourceLost(r, String(why));
    });
    return { uri, host: this.o.host };
  }

  /** Shadow = the final FIC image, which is what this destination started from. */
  private async finalImage(r: VmRuntime): Promise<{ image: Buffer; version: number }> {
    for (let i = 0; r.finalVersion === undefined && i < 50; i++) await sleepMs(20);
    // Kept while post-copy runs here (the checkpointer copies it into its shadow): a live
    // recovery needs exactly this image again, at once, and maybe while the first load runs.
    if (r.finalImageLoad && r.finalImageLoad.finalVersion === r.finalVersion) return r.finalImageLoad.p;
    const finalVersion = r.finalVersion;
    const p = (async () => {
      const plan = await planRestore(r.store, finalVersion);
      const img = await loadImage(r.store, plan);
      return { image: img.image, version: plan.target.version };
    })();
    r.finalImageLoad = { finalVersion, p };
    p.catch(() => {
      if (r.finalImageLoad?.p === p) r.finalImageLoad = undefined;
    });
    return p;
  }

  private async startRic(r: VmRuntime): Promise<void> {
    if (this.o.noCheckpoint) {
      if (this.gate) this.gate.holding = false;
      return;
    }
    if (this.gate) this.gate.holding = this.o.gate;
    const qmp = r.qmp;
    const from = await this.finalImage(r);
    // Recovered or fenced meanwhile: that QEMU is gone, its successor has its own loop.
    if (r.qmp !== qmp || !r.qemu || r.ckpt) return;
    r.dirty ??= await openDirtySource({ ramPath: r.paths!.ram, ramBytes: r.ramBytes, postcopyDestination: true });
    const counts = r.dirty.watchThreshold !== undefined;
    const threshold = this.o.ricDirtyPages ?? 0;
    r.ric = {
      dirtySource: r.dirty.kind === 'bitmap' ? 'bitmap' : 'present-pages',
      dirtyPagesThreshold: counts && threshold > 0 ? threshold : null,
      note:
        !counts && threshold > 0
          ? 'no dirty-page count with the SEEK_DATA source (stock QEMU): the dirty-page threshold is off, rounds are periodic and on packets'
          : undefined,
    };
    r.ckpt = new Checkpointer({
      kind: 'ric',
      ...this.vmIo(r),
      dirty: r.dirty,
      codec: this.o.codec,
      intervalMs: this.o.ricIntervalMs,
      maxPages: 0,
      maxTimeMs: 0,
      bandwidth: 0,
      gate: this.gate,
      eventDriven: this.o.ricEvent,
      dirtyPagesThreshold: r.ric.dirtyPagesThreshold ?? 0,
      resumeFrom: from,
      reloadOnFailure: true,
      log: (m) => this.o.log(`${this.o.host}: ${r.vm}: ${m}`),
      onRound: () => this.writeStatus(),
      rounds: r.rounds,
    });
    r.ckpt.start();
    this.note(
      r,
      `RIC on the ${r.ric.dirtySource} dirty source: every ${this.o.ricIntervalMs} ms` +
        (this.o.ricEvent ? ', on outgoing packets' : '') +
        (r.ric.dirtyPagesThreshold ? `, at ${r.ric.dirtyPagesThreshold} dirty pages` : '') +
        (r.ric.note ? ` (${r.ric.note})` : ''),
    );
  }

  private async startFicFromFinal(r: VmRuntime): Promise<void> {
    if (this.o.noCheckpoint) {
      if (this.gate) this.gate.holding = false;
      return;
    }
    const from = await this.finalImage(r);
    // The bitmap tracked from before the guest ran here names what changed since the final image.
    this.startFic(r, from, r.dirty);
  }

  /**
   * V-Recover's live recovery (patched QEMU): the VM runs on HERE, same QEMU. QEMU's incoming
   * side is postcopy-paused (the stream broke; `migrate-pause` when the source is merely silent);
   * every page the source had not sent yet is placed from the final FIC image — the source's RAM
   * at switchover, so exactly what it would have sent (migsafe-postcopy-fill, out of band, wakes
   * the vCPUs waiting for them) — and the migration completes. RIC goes on as FIC (onCompleted).
   * False, with the VM untouched, when this does not work: the caller restarts from the store.
   */
  private async recoverLive(r: VmRuntime, why: string): Promise<boolean> {
    const qmp = r.qmp;
    const qemu = r.qemu;
    if (!qmp || !qemu || qmp.isClosed) return false;
    const t0 = performance.now();
    const status = () => (r.incomingStatus ?? '') as string;
    const file = join(this.o.runDir, `${r.vm}.${this.o.host}.fill${Date.now()}`);
    try {
      if (status() !== 'postcopy-paused') {
        // A source cut off (not dead) leaves the stream open: break it here.
        await qmp.executeOob('migrate-pause').catch(() => {});
        for (let i = 0; i < 100 && status() !== 'postcopy-paused' && status() !== 'completed'; i++) await sleepMs(50);
      }
      if (status() === 'completed') return true; // the last pages arrived after all
      if (status() !== 'postcopy-paused') throw new Error(`incoming migration is ${status() || 'unknown'}, not postcopy-paused`);
      const tPaused = performance.now();
      const from = await this.finalImage(r);
      const tLoaded = performance.now();
      writeFileSync(file, from.image);
      const tWritten = performance.now();
      // restored/copy: 0008 (the block's own contents from before the migration; older binaries: zeros)
      const res = await qmp.executeOob<{
        blocks: { name: string; present: number; filled: number; restored?: number; zeroed: number; copy?: boolean }[];
      }>(
        'migsafe-postcopy-fill',
        { path: file, block: RAM_BACKEND_ID },
      );
      const ms = performance.now() - t0;
      const sum = res.blocks
        .filter((b) => b.filled || b.restored || b.zeroed)
        .map((b) => {
          if (b.filled) return `${b.name}: ${b.filled} from the image`;
          const z = b.zeroed ? `${b.zeroed} zero${b.copy ? '' : ' (no copy)'}` : '';
          return `${b.name}: ${b.restored ? `${b.restored} from its pre-migration copy${z ? ` + ${z}` : ''}` : z}`;
        })
        .join(', ');
      r.recoveries.push({ at: Date.now(), fromVersion: from.version, ms, why: `source failed in post-copy (${why}): live, missing pages filled from version ${from.version}` });
      r.finalImageLoad = undefined;
      this.note(
        r,
        `live recovery: QEMU pid ${qemu.pid} runs on, ${ms.toFixed(0)} ms (postcopy-paused after ${(tPaused - t0).toFixed(0)} ms, ` +
          `final image ${(tLoaded - tPaused).toFixed(0)} ms, file ${(tWritten - tLoaded).toFixed(0)} ms, fill ${(ms - (tWritten - t0)).toFixed(0)} ms; ` +
          `${sum || 'none missing'})`,
      );
      for (let i = 0; i < 200 && status() !== 'completed' && r.qemu === qemu; i++) await sleepMs(50);
      if (status() !== 'completed') this.note(r, `live recovery: incoming migration still ${status()} after the fill`);
      return true;
    } catch (e) {
      this.note(r, `live recovery not possible (${(e as Error).message}): restarting from the store`);
      return false;
    } finally {
      try {
        unlinkSync(file);
      } catch {
        /* not written */
      }
    }
  }

  /** The source went silent (or its connection closed) while this side receives the VM. */
  private async onSourceLost(r: VmRuntime, why: string): Promise<void> {
    if (r.role === 'owner' || r.role === 'none' || r.role === 'fenced' || r.migrationDone) return;
    if (r.role === 'postcopy-dst') {
      // We hold the lease (handed over at switchover); the pages we lack are in the store.
      this.note(r, `source lost (${why}) during post-copy`);
      // Recover only while we hold the lease AND reach the store (else: fence, the source may run it).
      let ok = false;
      try {
        ok = r.lease.token ? await r.lease.renew() : await this.takeLease(r, this.o.leaseTtlMs * 3 + 2000);
      } catch {
        ok = false;
      }
      if (!ok) return this.fence(r, 'source lost and the store (lease) is out of reach');
      if (r.canFill && (await this.recoverLive(r, why))) return;
      if (r.migrationDone || r.role !== 'postcopy-dst') return;
      await this.recoverHere(r, `source failed in post-copy (${why})`).catch((e: Error) => this.setRole(r, 'none', `recovery failed: ${e.message}`));
      return;
    }
    if (r.role === 'incoming') {
      this.note(r, `source lost (${why}) before the VM ran here`);
      // If the migration already handed us the lease, or the source dies for good, its lease
      // expires and we take it. If the source is alive and reaches the store, it keeps the lease
      // and the VM: we drop our incoming QEMU.
      const got = r.lease.token ? true : await this.takeLease(r, this.o.leaseTtlMs * 3 + 2000);
      if (!got) {
        if (r.qemu) killPid(r.qemu.pid);
        r.qemu = undefined;
        this.setRole(r, 'none', 'the source keeps the lease: it runs the VM');
        return;
      }
      await this.recoverHere(r, `source failed during ${r.mode} (${why})`).catch((e: Error) => this.setRole(r, 'none', `recovery failed: ${e.message}`));
    }
  }
}

interface PrepareRequest {
  vm: string;
  mode: MigrationMode;
  from: string;
}

function killPid(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* gone */
  }
}

function sleepMs(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

