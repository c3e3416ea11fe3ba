// What a host's agent keeps per VM (VmRuntime) and the host's services every side of a migration
// uses on it (VmHost): notes and roles, watching QEMU, the dirty sources and the checkpoint
// loops, the one teardown (stop), fencing, and recovery from the store.
import { openSync } from 'node:fs';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { vmPaths, type LaunchedQemu, type VmPaths } from '../qemu/launch.js';
import { QmpClient } from '../qemu/qmp.js';
import type { DirtySource } from '../qemu/dirty/source.js';
import { openDirtySource, useFt } from '../qemu/dirty/open.js';
import { CheckpointStore } from '../store/checkpoint-store.js';
import type { Durability } from '../store/durability.js';
import { recoverVm } from '../recovery/recover.js';
import { Lease } from '../ha/lease.js';
import { OutputGate } from '../ha/gate.js';
import { runsTheVm } from './decisions.js';
import { fence as fenceQemu, freeze as freezeQemu, killPid, signalPid, type Ownership } from '../ha/ownership.js';
import { loadVersion } from '../store/reader.js';
import type { Peer } from '../ha/peer.js';
import { PauseTurns } from '../checkpoint/pause-turns.js';
import { StoreShare } from '../checkpoint/store-share.js';
import { Checkpointer, type CheckpointerOptions, type RoundStat } from '../checkpoint/checkpointer.js';
import type { Logger } from '../util/logger.js';
import type { ProgressListener } from '../util/progress.js';

import type { AgentOptions } from './agent-options.js';

export type { AgentOptions };
export type MigrationMode = 'precopy' | 'postcopy' | 'hybrid';
export type Role = 'none' | 'owner' | 'migrating-src' | 'postcopy-src' | 'incoming' | 'postcopy-dst' | 'recovering' | 'fenced';

export interface VmRuntime {
  vm: string;
  /** The VM's logger: the agent's with `vm`. */
  log: Logger;
  /** Where its progress goes (AgentOptions.progress). */
  progress?: ProgressListener;
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
  rounds: RoundStat[];
  recoveries: { at: number; fromVersion: number; ms: number; why: string }[];
  /** Fenced by a silent store with its QEMU frozen (SIGSTOP, r.qemu kept): its old loop's end (with the shadow it kept), and whether it had QEMU's bitmap. */
  frozen?: { stopped: Promise<{ image: Buffer; version: number } | undefined>; bitmap: boolean };
  /** Times this side resumed a frozen QEMU, the lease back, and whether FIC went on from the kept shadow (shown in the status). */
  thaws?: { at: number; ms: number; fromVersion: number | null; shadow: 'kept' | 'store' | 'none' }[];
}

/** What a checkpoint loop needs beyond the VM's I/O: FIC's or RIC's schedule. */
export type LoopSettings = Omit<CheckpointerOptions, 'store' | 'qmp' | 'ramPath' | 'ramBytes' | 'deviceStatePath' | 'codec' | 'gate' | 'log' | 'onRound' | 'rounds'>;

export class VmHost {
  readonly vms = new Map<string, VmRuntime>();
  /** Every VM's stage-2 pauses take turns on this host; their rounds share the pipeline (store-share.ts). */
  readonly pauseTurns = new PauseTurns();
  readonly storeShare = new StoreShare();
  gate?: OutputGate;
  /** The durability policy as settled with the store at start (Agent.start). */
  durability: Durability = { kind: 'none' };

  constructor(
    readonly o: AgentOptions,
    readonly redis: Redis,
    /** The leases' own connection: a renewal must not queue behind a checkpoint's bulk writes. */
    private readonly leaseRedis: Redis,
    readonly ownership: Ownership,
    /** Called whenever something shown in the status changed. */
    private readonly changed: () => void,
  ) {}

  async openGate(): Promise<void> {
    if (this.o.gate) this.gate = await OutputGate.open();
    if (this.gate && this.o.gateIn) await this.gate.openInbound(this.o.gateIn.guestIp, this.o.gateIn.port);
  }

  runtime(vm: string): VmRuntime {
    let r = this.vms.get(vm);
    if (!r) {
      const log = this.o.log.child({ vm });
      r = {
        vm,
        log,
        progress: this.o.progress?.(log),
        store: new CheckpointStore(this.redis, vm),
        lease: new Lease(this.leaseRedis, vm, this.o.host, this.o.leaseTtlMs),
        ramBytes: 0,
        role: 'none',
        events: [],
        rounds: [],
        recoveries: [],
      };
      this.vms.set(vm, r);
      const lease = r.lease;
      // Only the lease holder's commits and compactions are accepted by the store.
      r.store.fenceWith(() => lease.fencing());
      r.store.setDurability(this.durability);
      if (this.o.recordKey) r.store.signRecordsWith(this.o.recordKey);
      this.o.metrics?.watchLease(vm, () => lease.token);
      this.o.metrics?.watchGate(vm, () => this.gate?.pending ?? 0);
    }
    return r;
  }

  note(r: VmRuntime, msg: string): void {
    r.events.push(`${Date.now()} ${msg}`);
    // The status keeps the recent story, not all of it: an agent runs for months.
    if (r.events.length > 400) r.events.splice(0, r.events.length - 200);
    r.log.info({ role: r.role }, msg);
    this.changed();
  }

  setRole(r: VmRuntime, role: Role, why: string): void {
    r.role = role;
    this.gate?.setInbound(runsTheVm(role));
    this.note(r, `role ${role} (${why})`);
  }

  /** Tells the store which agent runs the VM (the CLI's `migrate` finds it there). */
  publishAgent(r: VmRuntime): Promise<void> {
    return r.store.setAgentAddress(this.o.listen);
  }

  // ------------------------------------------------------------------ QEMU

  qemuLog(vm: string): number {
    return openSync(join(this.o.runDir, `${vm}.${this.o.host}.qemu.log`), 'a');
  }

  /** Whether to give this QEMU binary the migsafe-ft object (the patched QEMU's dirty bitmap). */
  useFt(bin: string): boolean {
    return !this.o.noCheckpoint && useFt(this.o.dirtySource ?? 'auto', bin);
  }

  async connectQmp(r: VmRuntime, opts: { oob?: boolean } = {}): Promise<QmpClient> {
    const q = r.qemu!;
    const qmp = await Promise.race([
      QmpClient.connect(r.paths!.qmp, 30_000, opts),
      q.exited.then((c) => {
        throw new Error(`QEMU exited (${c}) at start: see ${this.o.runDir}/${r.vm}.${this.o.host}.qemu.log`);
      }),
    ]);
    this.watchExit(r, q);
    return qmp;
  }

  /** Notes the exit of this QEMU unless it was replaced or let go first. */
  private watchExit(r: VmRuntime, q: LaunchedQemu): void {
    void q.exited.then((c) => {
      if (r.qemu !== q) return;
      r.frozen = undefined;
      this.note(r, `QEMU exited (${c})`);
      void this.stop(r);
      r.qemu = undefined;
      if (r.role === 'owner') this.setRole(r, 'none', 'QEMU gone');
    });
  }

  /**
   * The one teardown of the VM's checkpointing here: the loop and its dirty source (both
   * forgotten at once, so that nothing uses them again; the source closed once the loop's last
   * round ended). Resolves when the loop has stopped.
   */
  async stop(r: VmRuntime): Promise<void> {
    const { ckpt, dirty } = r;
    r.ckpt = undefined;
    r.dirty = undefined;
    await ckpt?.stop().catch(() => {});
    void dirty?.close();
  }

  /** This side's QEMU no longer runs the VM: killed (its exit is no news), its checkpointing stopped. */
  drop(r: VmRuntime): Promise<void> {
    const q = r.qemu;
    r.qemu = undefined;
    if (q) killPid(q.pid);
    return this.stop(r);
  }

  /** This side may no longer run the VM: kill its QEMU (frozen or not), drop what it would have sent. */
  fence(r: VmRuntime, why: string): void {
    const pid = r.qemu?.pid;
    const dropped = fenceQemu(pid, r.lease, this.gate);
    r.qemu = undefined;
    r.frozen = undefined;
    void this.stop(r);
    this.setRole(r, 'fenced', `${why}: ${pid ? `QEMU ${pid} killed` : 'no QEMU here'}, ${dropped} held packet(s) dropped`);
  }

  /**
   * The store is silent: this side may not run the VM for now, but nobody else may have it yet.
   * Its QEMU is frozen in place (the checkpoint loop stops; its round under way, stuck on QMP,
   * ends once QEMU goes on) — thawed if the lease comes back unchanged, killed if another took it.
   */
  freeze(r: VmRuntime, why: string): void {
    const pid = r.qemu!.pid;
    const dropped = freezeQemu(pid, r.lease, this.gate);
    const ckpt = r.ckpt;
    r.frozen = { stopped: this.stop(r).then(() => ckpt?.keptShadow()), bitmap: r.dirty !== undefined };
    this.setRole(r, 'fenced', `${why}: QEMU ${pid} frozen until the store answers, ${dropped} held packet(s) dropped`);
  }

  /**
   * The lease came back unchanged (nobody ran the VM meanwhile): the frozen QEMU goes on, and FIC
   * from the store's head (a full compare first) — from the stopped loop's shadow if it is the head:
   * reading it back took seconds that starved the lease renewals and re-fenced the VM (a livelock).
   */
  async thaw(r: VmRuntime, why: string): Promise<void> {
    const t0 = performance.now();
    const q = r.qemu!;
    const f = r.frozen!;
    r.frozen = undefined;
    signalPid(q.pid, 'SIGCONT');
    // The lease is held and fresh: the fencing rule watches the VM again from now on.
    this.setRole(r, 'owner', `${why}: QEMU ${q.pid} goes on`);
    const kept = await f.stopped;
    const fresh = () => r.qemu === q && r.role === 'owner' && !r.frozen && !r.ckpt;
    const head = await r.store.head();
    const shadow = !head ? 'none' : kept?.version === head ? 'kept' : 'store';
    const resumeFrom = shadow === 'kept' ? kept : shadow === 'store' ? await loadVersion(r.store) : undefined;
    if (!fresh()) return; // fenced again, or gone, meanwhile
    const dirty = f.bitmap ? await this.openBitmap(r, 'fic') : undefined;
    if (!fresh()) return void dirty?.close();
    r.dirty = dirty;
    this.startFic(r, resumeFrom && { image: resumeFrom.image, version: resumeFrom.version }, dirty);
    const ms = performance.now() - t0;
    (r.thaws ??= []).push({ at: Date.now(), ms, fromVersion: resumeFrom?.version ?? null, shadow });
    this.note(r, `FIC goes on ${resumeFrom ? `from version ${resumeFrom.version}` : 'with a first full checkpoint'} (${ms.toFixed(0)} ms after the lease came back)`);
  }

  /**
   * QEMU's dirty bitmap (the patched QEMU's migsafe-ft). For FIC tracking starts now, after the
   * guest ran: the first round compares all of RAM, then only what the bitmap names. At a
   * destination it is tracked from before the guest runs (`incoming`). Undefined, with a note
   * saying what is used instead, when it cannot be used.
   */
  async openBitmap(r: VmRuntime, use: 'fic' | 'incoming'): Promise<DirtySource | undefined> {
    try {
      return await openDirtySource({ ftSocket: r.paths!.ft, ramPath: r.paths!.ram, ramBytes: r.ramBytes, trackedFromStart: use === 'incoming' });
    } catch (e) {
      const instead = use === 'fic' ? 'FIC compares all of RAM' : 'RIC falls back to the SEEK_DATA source';
      this.note(r, `migsafe-ft unusable (${(e as Error).message}): ${instead}`);
      return undefined;
    }
  }

  // ------------------------------------------------------------------ checkpoint loops

  /**
   * Whether checkpointing is on. The gate holds what the guest sends (output commit) exactly
   * when it is: with it off no loop would ever release a packet.
   */
  checkpointing(): boolean {
    if (this.gate) this.gate.holding = this.o.gate && !this.o.noCheckpoint;
    return !this.o.noCheckpoint;
  }

  /** Starts the VM's checkpoint loop on its store, QMP and RAM file (checkpointing() said yes). */
  startLoop(r: VmRuntime, settings: LoopSettings): Checkpointer {
    r.ckpt = new Checkpointer({
      ...settings,
      store: r.store,
      qmp: r.qmp!,
      ramPath: r.paths!.ram,
      ramBytes: r.ramBytes,
      deviceStatePath: r.paths!.deviceState,
      codec: this.o.codec,
      gate: this.gate,
      pauseTurns: this.pauseTurns,
      storeShare: this.storeShare,
      log: r.log,
      onProgress: r.progress,
      onRound: () => this.changed(),
      onFenced: (e) => this.note(r, `checkpointing stopped: ${e.message}`),
      metrics: this.o.metrics,
      rounds: r.rounds,
    });
    r.ckpt.start();
    return r.ckpt;
  }

  /** FIC on `dirty` (default: a compare of RAM), from `resumeFrom` when the shadow is known. */
  startFic(r: VmRuntime, resumeFrom?: { image: Buffer; version: number }, dirty?: DirtySource): void {
    if (!this.checkpointing()) return;
    this.startLoop(r, {
      kind: 'fic',
      dirty,
      intervalMs: this.o.intervalMs,
      maxPages: this.o.maxPages,
      maxTimeMs: this.o.maxTimeMs,
      bandwidth: this.o.ficBandwidth,
      resumeFrom,
      compactEvery: this.o.compactEvery ?? 0,
    });
  }

  // ------------------------------------------------------------------ recovery

  /** Non-live recovery here: a new QEMU from the store's newest version, FIC on it. */
  async recoverHere(r: VmRuntime, why: string): Promise<void> {
    const t0 = performance.now();
    this.setRole(r, 'recovering', why);
    await this.drop(r);
    r.qmp?.close();
    r.peer?.close();
    this.gate?.discard();
    await r.store.cleanupPending().catch(() => []);
    const paths = vmPaths(this.o.runDir, `${r.vm}.${this.o.host}.r${Date.now()}`);
    const rec = await recoverVm({
      store: r.store,
      paths,
      logFd: this.qemuLog(r.vm),
      ft: (bin) => this.useFt(bin),
      diesWithMigsafe: true,
      onProgress: (p) => r.progress?.({ op: 'read-checkpoint', unit: 'frames', ...p }),
      onStep: (p) => r.progress?.(p),
    });
    r.paths = paths;
    r.qemu = rec.qemu;
    r.qmp = rec.qmp;
    r.ramBytes = rec.plan.vm.ramBytes;
    r.dirty = rec.ft ? await this.openBitmap(r, 'fic') : undefined;
    this.watchExit(r, rec.qemu);
    await this.publishAgent(r).catch(() => {});
    this.startFic(r, { image: rec.image, version: rec.plan.target.version }, r.dirty);
    const ms = performance.now() - t0;
    r.recoveries.push({ at: Date.now(), fromVersion: rec.plan.target.version, ms, why });
    this.o.metrics?.recovered(r.vm, { ...rec.timings, totalMs: ms });
    this.setRole(r, 'owner', `recovered from version ${rec.plan.target.version} in ${ms.toFixed(0)} ms, QEMU pid ${rec.qemu.pid}`);
  }
}

