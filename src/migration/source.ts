// The source side of a migration: QEMU's outgoing migration with FIC paused around it, the
// final FIC checkpoint and the lease hand-over at the switchover, and what the source does when
// the migration fails or the destination is lost.
import { setTimeout as sleep } from 'node:timers/promises';
import type { QmpEvent } from '../qemu/qmp.js';
import { Peer } from '../ha/peer.js';
import type { MigrationMode, VmHost } from './vm-runtime.js';

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

export class Source {
  constructor(private readonly host: VmHost) {}

  async migrate(req: MigrateRequest): Promise<MigrateResult> {
    const h = this.host;
    const o = h.o;
    const r = h.vms.get(req.vm);
    if (!r || r.role !== 'owner' || !r.qmp) throw new Error(`VM ${req.vm} does not run on ${o.host}`);
    const mode = req.mode ?? 'precopy';
    const post = mode !== 'precopy';
    const t0 = performance.now();
    const peer = await Peer.connect(req.to, undefined, 5000);
    r.peer = peer;
    r.mode = mode;
    const qmp = r.qmp;
    if (r.ckpt) r.ckpt.compactionPaused = true;
    peer.startHeartbeat({ intervalMs: o.hbIntervalMs, timeoutMs: o.hbTimeoutMs });
    const prep = await peer.request<{ uri: string; host: string }>('prepare', { vm: r.vm, mode, from: o.host }, 60_000);
    h.setRole(r, 'migrating-src', `migrating to ${prep.host} (${mode}) via ${prep.uri}`);
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
        h.note(r, `source migration status ${status}`);
        if (status === 'active' && mode === 'postcopy') void qmp.execute('migrate-start-postcopy').catch(() => {});
        if (status === 'active' && mode === 'hybrid' && req.postcopyAfterMs !== undefined) {
          setTimeout(() => void qmp.execute('migrate-start-postcopy').catch(() => {}), req.postcopyAfterMs);
        }
        if (status === 'pre-switchover') void onSwitchover();
        if (status === 'postcopy-active') h.setRole(r, 'postcopy-src', 'the VM runs at the destination; pages still here');
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
            finalVersion = m.version;
            finalPause = m.pauseMs;
          } else {
            finalVersion = await r.store.head().catch(() => 0);
          }
          const token = await r.lease.handOver(prep.host);
          if (!token) throw new Error('lost the lease before switchover');
          peer.notify('lease', { token, version: finalVersion });
          switchedOver = true;
          h.note(r, `final FIC version ${finalVersion}; lease handed to ${prep.host} (token ${token}); switching over`);
          await qmp.execute('migrate-continue', { state: 'pre-switchover' });
        } catch (e) {
          h.note(r, `switchover refused: ${(e as Error).message}; cancelling the migration`);
          await qmp.execute('migrate_cancel').catch(() => {});
        }
      };
      const onCompleted = async () => {
        completed = true;
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
          h.setRole(r, 'owner', `migration ${status}: the VM keeps running here`);
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
          h.note(r, `destination lost (${why}) during pre-copy: cancelling, the VM keeps running here`);
          await qmp.execute('migrate_cancel').catch(() => {});
          // onFailed('cancelled') finishes.
          setTimeout(() => void onFailed('cancelled'), 3000);
          return;
        }
        // Post-copy (or the end of pre-copy): the VM may only run where the lease is.
        h.note(r, `destination lost (${why}) after switchover: waiting for the lease`);
        const got = await h.ownership.takeLease(r.lease);
        if (settled || completed) return;
        if (!got) {
          await h.drop(r);
          h.setRole(r, 'none', 'the destination keeps the lease: it runs the VM');
          finish({ status: 'failed', error: `destination unreachable (${why}) but it holds the lease` });
          return;
        }
        try {
          await h.recoverHere(r, `destination or network failed in ${mode} (${why})`);
          finish({ status: 'recovered-at-source', error: why });
        } catch (e) {
          h.setRole(r, 'none', `recovery failed: ${(e as Error).message}`);
          finish({ status: 'failed', error: `recovery failed: ${(e as Error).message}` });
        }
      };
      qmp.on('event', onEvent);
      peer.once('suspect', (why: string) => void onPeerLost(String(why)));
      r.qemu?.exited.then(() => finish({ status: 'failed', error: 'source QEMU exited' }));
      void qmp.execute('migrate', { uri: prep.uri }).catch((e: Error) => {
        h.note(r, `migrate refused: ${e.message}`);
        void onFailed('failed');
      });
    });
  }
}
