// The source side of a migration: QEMU's outgoing migration with FIC paused around it, the
// final FIC checkpoint and the lease hand-over at the switchover, and what the source does when
// the migration fails or the destination is lost. What happens on each event in each phase is
// decisions.ts's sourceStep; this file carries its actions out.
import { setTimeout as sleep } from 'node:timers/promises';
import type { QmpClient, QmpEvent } from '../qemu/qmp.js';
import { parseAddr, Peer } from '../ha/peer.js';
import { socketNames, vmRefusal } from '../ha/tls.js';
import { enableStreamTls } from './stream-tls.js';
import type { MigrationMode, VmHost, VmRuntime } from './vm-runtime.js';
import { sourceStep, type SourceAction, type SourceEvent, type SourceState } from './decisions.js';
import { checkPrepareReply, migrationUri, type MigrateRequest } from './protocol.js';
import type { ProgressListener, WorkProgress } from '../util/progress.js';

/** How often a running migration's progress is asked of QEMU (query-migrate), ms. */
const PROGRESS_MS = 1000;

export type { MigrateRequest } from './protocol.js';

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

export class Source {
  constructor(private readonly host: VmHost) {}

  /** `onProgress`: RAM sent and still to send while QEMU migrates (also to the VM's own progress listener). */
  async migrate(req: MigrateRequest, onProgress?: ProgressListener): Promise<MigrateResult> {
    const h = this.host;
    const o = h.o;
    const r = h.vms.get(req.vm);
    if (!r || r.role !== 'owner' || !r.qmp) throw new Error(`VM ${req.vm} does not run on ${o.host}`);
    const mode = req.mode ?? 'precopy';
    const t0 = performance.now();
    if (r.peer && !r.peer.closed) throw new Error(`VM ${req.vm} is already migrating`);
    // The stream is TLS whenever the control channel is: the destination's QEMU must show a
    // certificate the CA signed for the host this agent dials (and authenticates). Made before
    // the destination is asked to prepare: a QEMU without TLS stops it here.
    if (o.tls) {
      await enableStreamTls(r.qmp, { tls: o.tls, endpoint: 'client', runDir: o.runDir, hostname: parseAddr(req.to).host, qemu: `the QEMU of ${req.vm}` }).catch((e: Error) => {
        h.note(r, `migration to ${req.to} not started: ${e.message}`);
        throw e;
      });
    }
    const peer = await Peer.connect(req.to, undefined, 5000, o.tls).catch((e: Error) => {
      h.note(r, `migration to ${req.to} not started: ${e.message}`);
      throw e;
    });
    // The destination must be trusted with this VM too (--tls-allow-vm), before it prepares anything.
    const untrusted = vmRefusal(socketNames(peer.sock), r.vm, o.tls);
    if (untrusted) {
      peer.close();
      h.note(r, `migration to ${req.to} not started: ${untrusted}`);
      throw new Error(`the destination agent at ${req.to}: ${untrusted}`);
    }
    r.peer = peer;
    r.mode = mode;
    const qmp = r.qmp;
    if (r.ckpt) r.ckpt.compactionPaused = true;
    peer.startHeartbeat({ intervalMs: o.hbIntervalMs, timeoutMs: o.hbTimeoutMs });
    let prep: { host: string; port: number; tls?: boolean };
    let uri: string;
    try {
      // The URI is made here: the address this agent connected (and, with TLS, authenticated) and
      // the port the destination announced. Nothing else of the reply reaches QEMU.
      prep = checkPrepareReply(await peer.request('prepare', { vm: r.vm, mode, from: o.host }, 60_000), peer.remoteAddress);
      uri = migrationUri(peer.remoteAddress, prep.port);
      if (o.tls && !prep.tls) {
        throw new Error(`the destination agent at ${req.to} takes the migration stream in clear (a migsafe without migration TLS?): upgrade it; an agent with --tls-* never sends guest RAM unencrypted`);
      }
    } catch (e) {
      peer.close();
      r.peer = undefined;
      if (r.ckpt) r.ckpt.compactionPaused = false;
      h.note(r, `migration to ${req.to} refused: ${(e as Error).message}; the VM keeps running here`);
      throw e;
    }
    h.setRole(r, 'migrating-src', `migrating to ${prep.host} (${mode}) via ${uri}`);
    // Labelled by the destination's host name, known (and checked) from the prepare reply on.
    peer.on('rtt', (ms: number) => o.metrics?.heartbeatRtt(r.vm, prep.host, ms / 1000));
    const caps = [
      { capability: 'events', state: true },
      { capability: 'pause-before-switchover', state: true },
      { capability: 'postcopy-ram', state: mode !== 'precopy' },
    ];
    await qmp.execute('migrate-set-capabilities', { capabilities: caps });
    const params: Record<string, unknown> = {};
    if (req.maxBandwidth) params['max-bandwidth'] = req.maxBandwidth;
    if (req.postcopyBandwidth) params['max-postcopy-bandwidth'] = req.postcopyBandwidth;
    if (Object.keys(params).length) await qmp.execute('migrate-set-parameters', params);
    // Progress is news, never a reason for the migration to fail.
    const report = (p: WorkProgress) => {
      try {
        r.progress?.(p);
        onProgress?.(p);
      } catch {
        /* a log or a requester gone: the migration goes on */
      }
    };
    return new Outgoing(h, r, qmp, peer, prep.host, { phase: 'precopy', mode, postcopyAfterMs: req.postcopyAfterMs }, t0, report).run(uri);
  }
}

type Outcome = Omit<MigrateResult, 'vm' | 'mode' | 'totalMs'>;

/** One outgoing migration: QEMU's events, the peer's loss and the lease wait go through sourceStep. */
class Outgoing {
  private finalVersion?: number;
  private finalPause?: number;
  private resolve!: (res: MigrateResult) => void;
  private settled = false;
  private progressTimer?: NodeJS.Timeout;
  private lastProgress?: WorkProgress;
  private readonly onEvent = (e: QmpEvent) => {
    if (e.event === 'MIGRATION_PASS') this.dispatch({ on: 'pass', pass: Number(e.data?.pass) });
    if (e.event !== 'MIGRATION') return;
    const status = String(e.data?.status);
    this.host.note(this.r, `source migration status ${status}`);
    this.dispatch({ on: 'status', status });
  };

  constructor(
    private readonly host: VmHost,
    private readonly r: VmRuntime,
    private readonly qmp: QmpClient,
    private readonly peer: Peer,
    private readonly to: string,
    private readonly s: SourceState,
    private readonly t0: number,
    private readonly report: ProgressListener,
  ) {}

  /** QEMU's RAM counters while it migrates: bytes sent, of sent + still to send. */
  private async pollProgress(): Promise<void> {
    const info = await this.qmp
      .execute<{ status?: string; ram?: { transferred?: number; remaining?: number; 'dirty-pages-rate'?: number } }>('query-migrate')
      .catch(() => undefined);
    const ram = info?.ram;
    if (this.settled || !ram || ram.transferred === undefined) return;
    this.lastProgress = {
      op: 'migration',
      unit: 'bytes',
      done: ram.transferred,
      total: ram.transferred + (ram.remaining ?? 0),
      ...(info?.status ? { phase: info.status } : {}),
      ...(ram['dirty-pages-rate'] !== undefined ? { dirtyRate: ram['dirty-pages-rate'] } : {}),
    };
    this.report(this.lastProgress);
  }

  run(uri: string): Promise<MigrateResult> {
    const done = new Promise<MigrateResult>((resolve) => (this.resolve = resolve));
    this.qmp.on('event', this.onEvent);
    this.progressTimer = setInterval(() => void this.pollProgress(), PROGRESS_MS);
    this.peer.once('suspect', (why: string) => this.dispatch({ on: 'destination-lost' }, String(why)));
    void this.r.qemu?.exited.then(() => this.dispatch({ on: 'qemu-exited' }));
    void this.qmp.execute('migrate', { uri }).catch((e: Error) => {
      this.host.note(this.r, `migrate refused: ${e.message}`);
      this.dispatch({ on: 'failed', status: 'failed' });
    });
    return done;
  }

  /** Feeds an event to the state machine and carries out what it says; `why` explains a failure. */
  private dispatch(ev: SourceEvent, why = ''): void {
    const step = sourceStep(this.s, ev);
    this.s.phase = step.phase;
    for (const a of step.actions) void this.act(a, ev, why);
  }

  private finish(res: Outcome): void {
    if (this.settled) return;
    this.settled = true;
    this.s.phase = 'over';
    this.qmp.off('event', this.onEvent);
    clearInterval(this.progressTimer);
    if (this.lastProgress) this.report({ ...this.lastProgress, ...(res.status === 'completed' ? { done: this.lastProgress.total } : {}), finished: true });
    const { r, s } = this;
    this.resolve({ vm: r.vm, mode: s.mode, totalMs: performance.now() - this.t0, finalFicVersion: this.finalVersion, finalFicPauseMs: this.finalPause, ...res });
  }

  private async act(a: SourceAction, ev: SourceEvent, why: string): Promise<void> {
    const { host: h, r, qmp, peer } = this;
    const startPostcopy = () => void qmp.execute('migrate-start-postcopy').catch(() => {});
    switch (a) {
      case 'start-postcopy':
        return startPostcopy();
      case 'start-postcopy-later':
        setTimeout(startPostcopy, this.s.postcopyAfterMs);
        return;
      case 'switchover':
        return this.switchover();
      case 'role-postcopy-src':
        return h.setRole(r, 'postcopy-src', 'the VM runs at the destination; pages still here');
      case 'complete':
        return this.complete();
      case 'run-on-here': {
        const status = failure(ev);
        const st = await qmp.execute<{ status: string }>('query-status').catch(() => ({ status: '?' }));
        if (st.status !== 'running') await qmp.execute('cont').catch(() => {});
        r.ckpt?.resume();
        if (r.ckpt) r.ckpt.compactionPaused = false;
        peer.close();
        r.peer = undefined;
        h.setRole(r, 'owner', `migration ${status}: the VM keeps running here`);
        return this.finish({ status: status as 'failed' | 'cancelled', error: `migration ${status}` });
      }
      case 'cancel':
        if (ev.on === 'destination-lost') h.note(r, `destination lost (${why}) during pre-copy: cancelling, the VM keeps running here`);
        await qmp.execute('migrate_cancel').catch(() => {});
        return;
      case 'backstop':
        setTimeout(() => this.dispatch({ on: 'failed', status: 'cancelled' }), 3000);
        return;
      case 'wait-for-lease': {
        // Post-copy (or the end of pre-copy): the VM may only run where the lease is.
        const lost = ev.on === 'destination-lost' ? why : `migration ${failure(ev)} after switchover`;
        h.note(r, `destination lost (${lost}) after switchover: waiting for the lease`);
        const got = await h.ownership.takeLease(r.lease);
        return this.dispatch({ on: 'lease', got }, lost);
      }
      case 'yield':
        await h.drop(r);
        h.setRole(r, 'none', 'the destination keeps the lease: it runs the VM');
        return this.finish({ status: 'failed', error: `destination unreachable (${why}) but it holds the lease` });
      case 'recover':
        try {
          await h.recoverHere(r, `destination or network failed in ${this.s.mode} (${why})`);
          return this.finish({ status: 'recovered-at-source', error: why });
        } catch (e) {
          h.setRole(r, 'none', `recovery failed: ${(e as Error).message}`);
          return this.finish({ status: 'failed', error: `recovery failed: ${(e as Error).message}` });
        }
      case 'fail-qemu-exited':
        return this.finish({ status: 'failed', error: 'source QEMU exited' });
    }
  }

  /** The VM is stopped by the migration: the final, consistent FIC checkpoint, then the lease goes. */
  private async switchover(): Promise<void> {
    const { host: h, r, qmp } = this;
    try {
      if (r.ckpt) {
        await r.ckpt.pause();
        // A round under way when the migration stopped the VM, which left it stopped, is
        // already the final consistent checkpoint (its stage 2 ran with the VM stopped for good).
        const last = r.ckpt.lastRound;
        let m = last && last.at > this.t0 && !last.resumed && last.endStatus === 'finish-migrate' && last.meta.version === r.ckpt.head ? last.meta : undefined;
        if (m) h.note(r, `the FIC round under way ended with the VM stopped by the migration: version ${m.version} is the final checkpoint`);
        for (let i = 0; !m; i++) {
          try {
            // The VM is stopped: one stage, one compare of RAM.
            m = await r.ckpt.roundNow('now', { vmStopped: true });
          } catch (e) {
            if (i >= 3) throw e;
            await sleep(300);
          }
        }
        this.finalVersion = m.version;
        this.finalPause = m.pauseMs;
      } else {
        this.finalVersion = await r.store.head().catch(() => 0);
      }
      const token = await r.lease.handOver(this.to);
      if (!token) throw new Error('lost the lease before switchover');
      this.peer.notify('lease', { token, version: this.finalVersion });
      this.dispatch({ on: 'handed-over' });
      h.note(r, `final FIC version ${this.finalVersion}; lease handed to ${this.to} (token ${token}); switching over`);
      await qmp.execute('migrate-continue', { state: 'pre-switchover' });
    } catch (e) {
      h.note(r, `switchover refused: ${(e as Error).message}; cancelling the migration`);
      this.dispatch({ on: 'switchover-failed' });
    }
  }

  /** QEMU completed: the VM runs at the destination; this side lets its QEMU go. */
  private async complete(): Promise<void> {
    const { host: h, r, qmp, peer } = this;
    const info = await qmp
      .execute<{ downtime?: number; 'total-time'?: number }>('query-migrate')
      .catch(() => ({}) as { downtime?: number; 'total-time'?: number });
    await h.stop(r);
    peer.notify('done');
    setTimeout(() => peer.close(), 2000);
    r.peer = undefined;
    await qmp.execute('quit').catch(() => {});
    r.qemu = undefined;
    h.setRole(r, 'none', 'migration completed; the VM runs at the destination');
    this.finish({ status: 'completed', downtimeMs: info.downtime, qemuTotalMs: info['total-time'] });
  }
}

/** The migration status an event that ended it reported. */
function failure(ev: SourceEvent): string {
  return ev.on === 'status' || ev.on === 'failed' ? ev.status : 'failed';
}
