// One checkpoint round, V-Recover style, in two stages:
//   stage 1 — VM running: send the pages dirtied since the last round (bounded by N pages, T ms);
//   stage 2 — VM paused: the pages still dirty and the device state into local memory, resume;
//   then write and commit atomically. The shadow holds exactly what the store's head holds, so
//   each round is a delta against it; if a round fails, the shadow no longer matches the store
//   and the next round starts over from a zero image (a full checkpoint).
import { readFile, rm } from 'node:fs/promises';
import type { CpuLevel, EncodeBatchOptions } from '../kernel/index.js';
import { QmpTimeoutError, type QmpClient } from '../qemu/qmp.js';
import type { DirtySource } from '../qemu/dirty/source.js';
import { NotDurableError, ParentMismatchError, type CheckpointStore, type PendingVersion } from '../store/checkpoint-store.js';
import type { CodecChoice } from '../store/frame.js';
import type { VersionMeta } from '../store/version-meta.js';
import { encodeBatchAsync, scanDirty, splitBatch } from '../kernel/page-delta.js';
import type { PauseTurns } from './pause-turns.js';

export interface EngineOptions {
  /** The host's turns for stage-2 pauses (an agent with several VMs): a pause waits for its turn. */
  pauseTurns?: PauseTurns;
  store: CheckpointStore;
  qmp: QmpClient;
  /** Guest RAM, mapped from QEMU's shared file. */
  ram: Buffer;
  dirty: DirtySource;
  codec: CodecChoice;
  /** Scratch file QEMU writes the device state into (tmpfs). */
  deviceStatePath: string;
  /** N: most pages sent in stage 1 of a round (0: no bound). */
  maxPages: number;
  /** T: longest stage 1 of a round, ms (0: no bound). */
  maxTimeMs: number;
  threads?: number;
  level?: CpuLevel;
  /** Start from this image and version (after a recovery) instead of a zero image. */
  resumeFrom?: { image: Buffer; version: number };
  /**
   * Called in stage 2 with the VM still paused, just before it is resumed (output commit:
   * everything the guest sent so far belongs to this round's state).
   */
  beforeResume?: () => void;
  /** After a stage-2 `stop` timed out, how long the round waits for QEMU to answer it (default 10 s). */
  stopGraceMs?: number;
  /**
   * Stage 1 of a round from a zero shadow (the first, full checkpoint): pages encoded so far
   * and in all, after each slice.
   */
  onFullProgress?: (p: { version: number; done: number; total: number }) => void;
}

/** Pages encoded per call in stage 1: large enough to amortize a call, small enough to stop on time. */
const SLICE_PAGES = 4096;

/** After a `stop` timed out: how long a round waits for QEMU to answer it before it gives up. */
const STOP_GRACE_MS = 10_000;


/**
 * Per QMP connection, while a stage-2 `stop` that timed out is still unanswered: the
 * query-status (and cont) queued behind it. No round of any engine on that connection starts
 * before it settles (a checkpointer that reloads makes a new engine), so no later `stop` can
 * come between the old one and its `cont`.
 */
const resumeAfterStop = new WeakMap<QmpClient, Promise<void>>();

/** QEMU did not answer a stage-2 `stop`: the guest may be paused until it does (see stopTimedOut). */
export class StopTimeoutError extends Error {
  override name = 'StopTimeoutError';
}

export class CheckpointEngine {
  private shadow: Buffer;
  /** The version the shadow equals (0: zero image). */
  private parent = 0;
  /** Whether the last round's stage 1 compared all of guest RAM (no dirty log, or a zero shadow). */
  lastRoundFull = false;
  /**
   * The VM's run state at the end of the last round's stage 2 and whether the round resumed it:
   * a round that found the VM stopped by a migration (finish-migrate) did not let it run again,
   * so it is a consistent checkpoint of the VM as the migration stopped it.
   */
  lastRoundEnd?: { status?: string; resumed: boolean };
  /** The last commit: waiting for the version's writes plus the commit script, ms. */
  lastCommitMs = 0;
  /** The version the round under way (or the last one) writes. */
  attempt?: number;

  constructor(private readonly o: EngineOptions) {
    if (o.resumeFrom) {
      if (o.resumeFrom.image.length !== o.ram.length) throw new Error('resume image and guest RAM differ in size');
      this.shadow = Buffer.from(o.resumeFrom.image);
      this.parent = o.resumeFrom.version;
    } else {
      this.shadow = Buffer.alloc(o.ram.length);
    }
  }

  /** The version the next round's deltas apply to. */
  get head(): number {
    return this.parent;
  }

  /** The shadow and the committed version it equals; undefined while it is a zero image (nothing to keep). */
  shadowImage(): { image: Buffer; version: number } | undefined {
    return this.parent ? { image: this.shadow, version: this.parent } : undefined;
  }

  /** New N and T bounds of stage 1, from the next round on (a reloaded configuration). */
  setBounds(maxPages: number, maxTimeMs: number): void {
    this.o.maxPages = maxPages;
    this.o.maxTimeMs = maxTimeMs;
  }

  /**
   * `vmStopped`: the VM is already stopped (a migration's switchover): no live stage, everything
   * in stage 2 (one compare of RAM instead of two).
   */
  async round(opts: { vmStopped?: boolean } = {}): Promise<VersionMeta> {
    const o = this.o;
    await resumeAfterStop.get(o.qmp);
    const pending = await o.store.begin(this.parent);
    this.attempt = pending.version;
    try {
      const stage1 = opts.vmStopped ? this.noStage1() : await this.stage1(pending);
      const stage2 = await this.stage2(stage1.leftover, opts.vmStopped === true && this.parent === 0);
      let stage2Pages = 0;
      // Stage 2's output goes in frames of about 16 MiB so that readers stream.
      for (const part of splitBatch(stage2.records, 16 << 20)) stage2Pages += await pending.addPages(part, o.codec);
      await pending.setDevice(stage2.device, o.codec);
      const pages = stage1.pages + stage2Pages;
      const commitStart = performance.now();
      const meta = await pending.commit({
        pages,
        bytesRaw: pages * 4096,
        pauseMs: stage2.pauseMs,
        deviceStateBytes: stage2.device.length,
        dirtySource: o.dirty.kind,
        codec: `${o.codec.codec}:${o.codec.level}`,
        stage1Pages: stage1.pages,
        stage2Pages,
      });
      this.lastCommitMs = performance.now() - commitStart;
      this.parent = meta.version;
      return meta;
    } catch (e) {
      // Committed but not yet durable: the store has it, so the shadow is still its image.
      if (e instanceof NotDurableError) {
        this.parent = e.version;
        throw e;
      }
      // The shadow may hold pages the store never got: start over from a zero image.
      this.shadow.fill(0);
      this.parent = 0;
      await pending.abort().catch(() => {});
      if (e instanceof ParentMismatchError) {
        throw new Error(`${e.message}; the store lost versions (Redis restarted?): the next round is a full checkpoint`);
      }
      throw e;
    }
  }

  private noStage1(): { pages: number; leftover: Uint32Array } {
    // Stage 2 asks the dirty source with the shadow as the round found it.
    this.lastRoundFull = this.parent === 0;
    return { pages: 0, leftover: new Uint32Array(0) };
  }

  /**
   * The dirty source's candidates against the shadow; `full`: it compared all of guest RAM.
   * `shadowZero`: the shadow is still the zero image the round started from.
   */
  private async harvest(shadowZero: boolean): Promise<{ pages: Uint32Array; full: boolean }> {
    let full = false;
    const pages = await this.o.dirty.harvest({
      shadowZero,
      compareAll: () => {
        full = true;
        return scanDirty(this.o.ram, this.shadow, this.o.level);
      },
    });
    return { pages, full };
  }

  /**
   * Both stages encode alike, in the combined mode: a dense page goes as packed words when
   * they are smaller than its XBZRLE delta and the whole page (docs/kernel.md).
   */
  private encodeOptions(): EncodeBatchOptions {
    return { threads: this.o.threads, level: this.o.level, dense: true };
  }

  private async stage1(pending: PendingVersion): Promise<{ pages: number; leftover: Uint32Array }> {
    const o = this.o;
    const t0 = performance.now();
    const harvested = await this.harvest(this.parent === 0);
    this.lastRoundFull = harvested.full;
    const candidates = harvested.pages;
    let pages = 0;
    let at = 0;
    // Only a round from a zero shadow (the first, full checkpoint) is long enough to report.
    const report = this.parent === 0 && o.onFullProgress ? (done: number) => o.onFullProgress!({ version: pending.version, done, total: candidates.length }) : undefined;
    report?.(0);
    while (at < candidates.length) {
      if (o.maxPages && pages >= o.maxPages) break;
      if (o.maxTimeMs && performance.now() - t0 >= o.maxTimeMs) break;
      const take = Math.min(SLICE_PAGES, candidates.length - at, o.maxPages ? o.maxPages - pages : Infinity);
      const slice = candidates.subarray(at, at + take);
      at += take;
      const raw = await encodeBatchAsync(o.ram, this.shadow, slice, this.encodeOptions());
      report?.(at);
      if (raw.length === 0) continue;
      pages += await pending.addPages(raw, o.codec);
    }
    // Pages not reached in stage 1 must be looked at in stage 2 (a compare of all RAM finds
    // them anyway; a dirty log would not name them again).
    return { pages, leftover: candidates.subarray(at) };
  }

  /** When the last stage-2 pause began (ms since the epoch): pauses of several VMs can be told apart. */
  lastPauseAt = 0;

  private async stage2(leftover: Uint32Array, shadowZero: boolean): Promise<{ records: Buffer; device: Buffer; pauseMs: number }> {
    const release = await this.o.pauseTurns?.take();
    try {
      return await this.pausedStage(leftover, shadowZero);
    } finally {
      release?.();
    }
  }

  private async pausedStage(leftover: Uint32Array, shadowZero: boolean): Promise<{ records: Buffer; device: Buffer; pauseMs: number }> {
    const o = this.o;
    const t0 = performance.now();
    this.lastPauseAt = Date.now();
    try {
      await o.qmp.execute('stop');
    } catch (e) {
      if (e instanceof QmpTimeoutError) throw await this.stopTimedOut(e);
      throw e; // refused: the VM was not stopped
    }
    let records: Buffer;
    let device: Buffer;
    try {
      const harvested = await this.harvest(shadowZero);
      const candidates = harvested.full ? harvested.pages : mergePages(harvested.pages, leftover);
      records = await encodeBatchAsync(o.ram, this.shadow, candidates, this.encodeOptions());
      await o.qmp.execute('xen-save-devices-state', { filename: o.deviceStatePath, live: false });
      device = await readFile(o.deviceStatePath);
    } finally {
      o.beforeResume?.();
      // Never leave the guest paused, whatever failed; but a VM that a migration has stopped
      // meanwhile (finish-migrate, postmigrate) is not ours to resume.
      const st = await o.qmp.execute<{ status: string }>('query-status').catch(() => undefined);
      const resume = !st || st.status === 'paused';
      this.lastRoundEnd = { status: st?.status, resumed: resume };
      if (resume) await o.qmp.execute('cont').catch(() => {});
    }
    const pauseMs = performance.now() - t0;
    await rm(o.deviceStatePath, { force: true });
    return { records, device, pauseMs: Math.round(pauseMs * 1000) / 1000 };
  }

  /**
   * `stop` got no reply in time. QEMU answers in order, so a query-status sent now is answered
   * right after the stop: when it says paused, `cont` follows — the guest is never left paused
   * by a round that gave up. A blind `cont` is not sent: a migration may have stopped the VM
   * meanwhile, and that one is not ours to resume. Waits stopGraceMs for it; past that the
   * round fails, the resume still follows whenever QEMU answers, and no round starts before.
   */
  private async stopTimedOut(e: QmpTimeoutError): Promise<Error> {
    const qmp = this.o.qmp;
    const grace = this.o.stopGraceMs ?? STOP_GRACE_MS;
    let end: { status: string; resumed: boolean } | undefined;
    const resumed = qmp
      .execute<{ status: string }>('query-status', undefined, { timeoutMs: 0 })
      .then(async (st) => {
        const resume = st.status === 'paused';
        end = { status: st.status, resumed: resume };
        this.lastRoundEnd = end;
        if (resume) await qmp.execute('cont', undefined, { timeoutMs: 0 });
      })
      .catch(() => {}); // QMP closed: QEMU is gone, nothing to resume
    let timer: NodeJS.Timeout | undefined;
    const inTime = await Promise.race([
      resumed.then(() => true),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(false), grace))),
    ]);
    clearTimeout(timer);
    if (inTime) {
      const what = !end ? 'QMP closed meanwhile' : end.resumed ? 'the guest was resumed' : `the guest was left ${end.status} (not paused by this round)`;
      return new StopTimeoutError(`${e.message}; QEMU answered later and ${what}: round abandoned`);
    }
    resumeAfterStop.set(qmp, resumed.finally(() => resumeAfterStop.delete(qmp)));
    return new StopTimeoutError(
      `QMP stop: no reply from QEMU within ${e.timeoutMs + grace} ms: its monitor is stuck and the guest may be paused. ` +
        'migsafe resumes it (cont) as soon as QEMU answers and takes no checkpoint until then; if QEMU never answers it is hung: ' +
        'kill it and `migsafe recover` the VM',
    );
  }
}

function mergePages(a: Uint32Array, b: Uint32Array): Uint32Array {
  // Usual case in stage 2: stage 1 reached every candidate (nothing left over).
  if (b.length === 0) return a;
  if (a.length === 0) return b;
  const s = new Set<number>(a);
  for (const p of b) s.add(p);
  return Uint32Array.from(s).sort();
}
