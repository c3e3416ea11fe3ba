// The one checkpoint loop, for `run`, `attach` and `recover` and for the agent: FIC (periodic,
// bounded per round by N pages and T ms, and throttled to a bandwidth budget so that a
// concurrent migration keeps its share of the link; old versions compacted into the base), RIC
// at a post-copy destination (periodic or event-based: an outgoing packet, or the dirty-page
// count, starts a round early; a failed round reloads the shadow from the store), and output
// commit through a gate in both: frames the guest sent before a round's pause are released
// once that round is committed.
//
// The orchestrator can pause the loop (pause() waits for the round under way to finish) and
// take one round on demand (roundNow(): the final consistent FIC checkpoint at downtime).
import type { PauseTurns } from './pause-turns.js';
import type { StoreShare } from './store-share.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { CheckpointEngine } from './engine.js';
import type { CheckpointGate } from './checkpoint-gate.js';
import { mapFile } from '../kernel/map-file.js';
import type { DirtySource } from '../qemu/dirty/source.js';
import { ScanDirtySource } from '../qemu/dirty/scan.js';
import type { QmpClient } from '../qemu/qmp.js';
import { FencedError, NotDurableError, type CheckpointStore } from '../store/checkpoint-store.js';
import type { CodecChoice } from '../store/frame.js';
import { loadVersion } from '../store/reader.js';
import { compact } from '../store/compaction.js';
import type { VersionMeta } from '../store/version-meta.js';
import type { Metrics } from '../util/metrics.js';
import type { Logger } from '../util/logger.js';
import type { ProgressListener, WorkProgress } from '../util/progress.js';

export type { CheckpointGate };

export interface CheckpointerOptions {
  kind: 'fic' | 'ric';
  store: CheckpointStore;
  qmp: QmpClient;
  ramPath: string;
  ramBytes: number;
  deviceStatePath: string;
  /** Where dirty pages come from (default: a compare of all guest RAM); the caller closes it. */
  dirty?: DirtySource;
  codec: CodecChoice;
  /** Encoder threads (default 1). */
  threads?: number;
  /** I: ms between the starts of two rounds. */
  intervalMs: number;
  /** N: most pages sent live per round (0: no bound). */
  maxPages: number;
  /** T: longest live stage of a round, ms (0: no bound). */
  maxTimeMs: number;
  /** Bytes per second the checkpoint stream may use on average (0: no limit). */
  bandwidth?: number;
  gate?: CheckpointGate;
  /** Start a round as soon as the guest sends a packet (RIC event mode), not before minGapMs. */
  eventDriven?: boolean;
  minGapMs?: number;
  /** Also start a round once this many pages were dirtied (0: off; a source that counts them). */
  dirtyPagesThreshold?: number;
  resumeFrom?: { image: Buffer; version: number };
  /** After a failed round, reload the shadow from the store's head, not a zero image (RIC: no full checkpoint at a post-copy destination). */
  reloadOnFailure?: boolean;
  /** Where the loop's lines go (a child logger carrying the VM's `vm`); a round's lines carry `version`. */
  log: Logger;
  /** The line logged for a committed round (default: kind, pages, pause, replication, trigger). */
  formatRound?: (m: VersionMeta, st: RoundStat, released: number) => string;
  onRound?: (m: VersionMeta) => void;
  /** The store refused a commit: this writer lost the VM's lease. The loop has stopped. */
  onFenced?: (e: FencedError) => void;
  /** A commit refused as the lease ran out with nobody holding it: take it back (WriterLease.reclaim); true goes on. */
  reclaimLease?: () => Promise<boolean>;
  /** Shared by an agent's VMs: turns for stage-2 pauses; the pipeline's rate (intervals stretch when it falls behind). */
  pauseTurns?: PauseTurns;
  storeShare?: StoreShare;
  /** Where round figures go for `--metrics` (src/util/metrics.ts). */
  metrics?: Metrics;
  /** FIC outside a migration: fold old versions into the base once more than 2×K are stored (0: never). */
  compactEvery?: number;
  /** Progress of the long parts: a round's full compare of RAM (the first checkpoint), a compaction. */
  onProgress?: ProgressListener;
  /** Where round statistics go (kept by the caller across checkpointers); default: a new array. */
  rounds?: RoundStat[];
}

export interface RoundStat {
  version: number;
  pauseMs: number;
  /** From the start of the round to its commit (V-Recover's replication time). */
  replicationMs: number;
  pages: number;
  bytesStored: number;
  kind: 'fic' | 'ric';
  /** What started the round: the interval, an outgoing packet, the dirty-page threshold, or a caller. */
  trigger?: RoundTrigger;
  /** Where its dirty pages came from: the dirty source's kind. */
  dirtySource?: string;
  fullCompare?: boolean; // stage 1 compared all of guest RAM (no dirty log for this round)
  pausedAt?: number; // when its stage-2 pause began, ms since the epoch
}

export type RoundTrigger = 'periodic' | 'packet' | 'dirty-pages' | 'now';

export class Checkpointer {
  private engine: CheckpointEngine;
  private readonly ram: Buffer;
  private readonly dirty: DirtySource;
  private running = false;
  private paused = false;
  private current: Promise<unknown> = Promise.resolve();
  private wakeUp?: () => void;
  private wokenBy?: RoundTrigger;
  /** A failed round left the shadow behind the store: reload it before the next round. */
  private needsReload = false;
  private loopDone: Promise<void> = Promise.resolve();
  readonly rounds: RoundStat[];
  failures = 0;
  kind: 'fic' | 'ric';
  /** Set while a migration runs: a compaction must not delay the switchover. */
  compactionPaused = false;

  constructor(private readonly o: CheckpointerOptions) {
    this.kind = o.kind;
    this.rounds = o.rounds ?? [];
    this.ram = mapFile(o.ramPath, o.ramBytes);
    this.dirty = o.dirty ?? new ScanDirtySource();
    this.engine = this.makeEngine(o.resumeFrom);
    o.gate?.on('frame', () => {
      // While a round runs, a packet is either in it (marked in its pause) or still pending after it.
      if (this.o.eventDriven && this.wakeUp) this.wake('packet');
    });
  }

  get head(): number {
    return this.engine.head;
  }

  /**
   * What the loop's shadow holds once it stopped: a committed version's image, for a loop that
   * goes on later on the same QEMU (a thaw) without reading it back from the store. Undefined
   * when a failed round left it behind the store.
   */
  keptShadow(): { image: Buffer; version: number } | undefined {
    return this.needsReload ? undefined : this.engine.shadowImage();
  }

  private mark = 0;

  private makeEngine(resumeFrom?: { image: Buffer; version: number }): CheckpointEngine {
    return new CheckpointEngine({
      store: this.o.store,
      qmp: this.o.qmp,
      ram: this.ram,
      dirty: this.dirty,
      codec: this.o.codec,
      deviceStatePath: this.o.deviceStatePath,
      maxPages: this.o.maxPages,
      maxTimeMs: this.o.maxTimeMs,
      threads: this.o.threads,
      pauseTurns: this.o.pauseTurns,
      resumeFrom,
      beforeResume: () => {
        if (this.o.gate) this.mark = this.o.gate.mark();
      },
      onFullProgress: this.o.onProgress && ((p) => this.report({ op: 'full-checkpoint', unit: 'pages', ...p })),
    });
  }

  /** The last progress report of the operation under way (to say it ended). */
  private inProgress?: WorkProgress;

  private report(p: WorkProgress): void {
    this.inProgress = p.finished ? undefined : p;
    this.o.onProgress?.(p);
  }

  /** Ends the report of an operation that stopped without saying so (a failed round, a short stage 1). */
  private endProgress(): void {
    if (this.inProgress) this.report({ ...this.inProgress, finished: true });
  }

  /** One round now; releases the gate's frames up to the round's pause when it commits. */
  roundNow(trigger: RoundTrigger = 'now', opts: { vmStopped?: boolean } = {}): Promise<VersionMeta> {
    const p = this.current.then(() => this.doRound(trigger, opts));
    this.current = p.catch(() => {});
    return p;
  }

  /** Starts the next round of the loop early (an event: a packet, the dirty-page threshold). */
  wake(trigger: RoundTrigger): void {
    this.wokenBy ??= trigger;
    this.wakeUp?.();
  }

  private async reload(why: string): Promise<void> {
    const img = await loadVersion(this.o.store);
    this.engine = this.makeEngine({ image: img.image, version: img.version });
    // The dirty source must now name every page that may differ from that version.
    this.dirty.reset?.();
    this.needsReload = false;
    this.o.log.warn({ kind: this.kind, version: img.version }, `${this.kind.toUpperCase()} ${why}; shadow reloaded from version ${img.version}`);
  }

  /**
   * The last round that committed, with the VM's run state at its end: a round that ended with
   * the VM stopped by a migration (`finish-migrate`, not resumed) is already the final
   * consistent checkpoint of that migration.
   */
  lastRound?: { meta: VersionMeta; endStatus?: string; resumed: boolean; at: number };

  private async doRound(trigger: RoundTrigger, opts: { vmStopped?: boolean } = {}): Promise<VersionMeta> {
    const t0 = performance.now();
    // Never a round on a zeroed shadow where a full compare cannot be read (RIC: holes).
    if (this.needsReload) await this.reload('retrying the reload');
    try {
      this.lastRound = undefined;
      const m = await this.engine.round(opts).finally(() => this.endProgress());
      const end = this.engine.lastRoundEnd;
      this.lastRound = { meta: m, endStatus: end?.status, resumed: end?.resumed ?? true, at: performance.now() };
      const metrics = this.o.metrics;
      const vmId = this.o.store.vmId;
      const released = this.o.gate ? this.o.gate.release(this.mark, metrics && ((s) => metrics.gateHold(vmId, s))) : 0;
      const st: RoundStat = {
        version: m.version,
        pauseMs: m.pauseMs,
        replicationMs: performance.now() - t0,
        pages: m.pages,
        bytesStored: m.bytesStored,
        kind: this.kind,
        trigger,
        dirtySource: m.dirtySource,
        fullCompare: this.engine.lastRoundFull,
        pausedAt: this.engine.lastPauseAt || undefined,
      };
      this.rounds.push(st);
      this.o.log.info(
        {
          version: m.version,
          kind: this.kind,
          pages: m.pages,
          stage1Pages: m.stage1Pages,
          stage2Pages: m.stage2Pages,
          bytesStored: m.bytesStored,
          pauseMs: m.pauseMs,
          replicationMs: Math.round(st.replicationMs),
          trigger,
          dirtySource: m.dirtySource,
          ...(this.o.gate ? { released } : {}),
        },
        (this.o.formatRound ?? this.describeRound)(m, st, released),
      );
      this.o.metrics?.round(this.o.store.vmId, { ...st, commitMs: this.engine.lastCommitMs, bytesRaw: m.bytesRaw, committedAt: m.committedAt });
      this.o.onRound?.(m);
      return m;
    } catch (e) {
      this.failures++;
      this.o.metrics?.roundFailed(this.o.store.vmId, this.kind);
      if (this.o.reloadOnFailure && !this.o.qmp.isClosed && !(e instanceof FencedError) && !(e instanceof NotDurableError)) {
        this.needsReload = true;
        try {
          await this.reload(`round failed (${(e as Error).message})`);
        } catch (e2) {
          this.o.log.error({ kind: this.kind, parent: this.engine.head }, `${this.kind.toUpperCase()} round failed (${(e as Error).message}); reload failed: ${(e2 as Error).message}`);
        }
      } else {
        this.o.log.error({ kind: this.kind, parent: this.engine.head }, `${this.kind.toUpperCase()} round failed: ${(e as Error).message}`);
      }
      throw e;
    }
  }

  private readonly describeRound = (m: VersionMeta, st: RoundStat, released: number): string =>
    `${this.kind.toUpperCase()} version ${m.version}: ${m.pages} pages (${m.stage1Pages} live, ${m.stage2Pages} paused), ` +
    `${m.bytesStored} B, pause ${m.pauseMs.toFixed(1)} ms, replication ${st.replicationMs.toFixed(0)} ms, ` +
    `${m.dirtySource} source, ${st.trigger}` +
    (this.o.gate ? `, ${released} packet(s) released` : '');

  /** Runs rounds until stop() or until QEMU goes; rounds are skipped while paused. */
  start(): void {
    if (this.running) return;
    this.running = true;
    const threshold = this.o.dirtyPagesThreshold ?? 0;
    if (threshold > 0) this.dirty.watchThreshold?.(threshold, () => this.wake('dirty-pages'));
    this.loopDone = this.loop();
  }

  /** Resolves when the loop has ended: stop(), or QEMU's QMP connection closed. */
  get done(): Promise<void> {
    return this.loopDone;
  }

  private async loop(): Promise<void> {
    while (this.running && !this.o.qmp.isClosed) {
      const t0 = performance.now();
      let stored = 0;
      if (!this.paused) {
        const trigger = this.wokenBy ?? 'periodic';
        this.wokenBy = undefined;
        try {
          const st = await this.roundNow(trigger);
          stored = st.bytesStored;
          this.o.storeShare?.record(this.o.store.vmId, st.bytesStored, performance.now() - t0);
          await this.maybeCompact();
        } catch (e) {
          // Logged; but a writer the store fenced off is no longer the VM's owner: it stops.
          if (e instanceof FencedError && !(e.leaseFree && (await this.o.reclaimLease?.().catch(() => false)))) {
            this.running = false;
            this.o.onFenced?.(e);
          }
        }
      } else {
        this.wokenBy = undefined; // no rounds while paused: an event now must not make the loop spin
      }
      // Until the next round: asleep for the interval (a retune() works the wait out again).
      while (this.running) {
        this.retuned = false;
        const elapsed = performance.now() - t0;
        // Bandwidth budget: a round that stored B bytes buys B / bandwidth seconds.
        const bandwidth = this.o.bandwidth ?? 0;
        const budgetMs = bandwidth > 0 ? (stored / bandwidth) * 1000 : 0;
        // Several VMs on this agent: this one's share of the pipeline's measured rate.
        const shareMs = this.o.storeShare?.minGapMs(stored, this.o.intervalMs) ?? 0;
        let wait = Math.max(this.o.intervalMs, budgetMs, shareMs) - elapsed;
        if (this.o.eventDriven && this.o.gate && this.o.gate.pending > 0) this.wokenBy ??= 'packet';
        if (this.wokenBy) wait = Math.min(wait, Math.max(0, (this.o.minGapMs ?? 50) - elapsed));
        if (wait <= 0) break;
        await this.sleepOrWake(wait);
        if (!this.retuned) break;
      }
    }
    this.o.storeShare?.forget(this.o.store.vmId);
  }

  private async maybeCompact(): Promise<void> {
    const k = this.o.compactEvery ?? 0;
    if (!k || this.kind !== 'fic' || this.paused || this.compactionPaused) return;
    const committed = await this.o.store.committed();
    if (committed.length <= 2 * k) return;
    const upTo = committed[committed.length - k]!;
    const onProgress = this.o.onProgress && ((p: WorkProgress) => this.report(p));
    const p = this.current.then(() => compact(this.o.store, upTo, this.o.codec, onProgress).finally(() => this.endProgress()));
    this.current = p.catch(() => {});
    try {
      const r = await p;
      this.o.log.info({ version: r.base, dropped: r.dropped.length, baseBytes: r.baseBytes }, `compacted ${r.dropped.length} old versions into the base at version ${r.base}`);
    } catch (e) {
      this.o.log.error({ version: upTo }, `compaction failed: ${(e as Error).message}`);
      if (e instanceof FencedError) throw e;
    }
  }

  private retuned = false;

  /**
   * New schedule and bounds (a reloaded configuration): the wait under way is worked out again
   * with them, the bounds hold from the next round, a new dirty-page threshold at once.
   */
  retune(s: Partial<Pick<CheckpointerOptions, 'intervalMs' | 'maxPages' | 'maxTimeMs' | 'bandwidth' | 'compactEvery' | 'eventDriven' | 'dirtyPagesThreshold'>>): void {
    const before = this.o.dirtyPagesThreshold ?? 0;
    for (const [k, v] of Object.entries(s)) if (v !== undefined) (this.o as unknown as Record<string, unknown>)[k] = v;
    this.engine.setBounds(this.o.maxPages, this.o.maxTimeMs);
    const threshold = this.o.dirtyPagesThreshold ?? 0;
    if (this.running && threshold !== before) this.dirty.watchThreshold?.(threshold, () => this.wake('dirty-pages'));
    this.retuned = true;
    this.wakeUp?.();
  }

  private async sleepOrWake(ms: number): Promise<void> {
    const ac = new AbortController();
    this.wakeUp = () => ac.abort();
    await sleep(ms, undefined, { signal: ac.signal }).catch(() => {});
    this.wakeUp = undefined;
  }

  /** Stops starting rounds; resolves when the round under way (if any) has finished. */
  async pause(): Promise<void> {
    this.paused = true;
    await this.current;
  }

  resume(): void {
    this.paused = false;
  }

  /** After the migration completed: every page is present, switch RIC to a plain FIC loop. */
  becomeFic(): void {
    this.dirty.allPresent?.();
    if (this.o.dirtyPagesThreshold) this.dirty.watchThreshold?.(0, () => {});
    this.kind = 'fic';
    this.o.eventDriven = false;
    this.wokenBy = undefined;
  }

  async stop(): Promise<void> {
    this.running = false;
    this.wakeUp?.();
    await this.current;
    await this.loopDone;
  }
}
