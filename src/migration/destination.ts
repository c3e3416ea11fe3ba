// The destination side of a migration: prepare (QEMU with -incoming, the peer's lease hand-over
// and completion notices), RIC while post-copy runs here, the final FIC image it starts from, and
// what it does when the source is lost: a live recovery (live-recovery.ts) or one from the store.
import { setTimeout as sleep } from 'node:timers/promises';
import type { QmpEvent } from '../qemu/qmp.js';
import { createRamFile, launchQemu, vmPaths } from '../qemu/launch.js';
import { openDirtySource } from '../qemu/dirty/open.js';
import { parseAddr, type Peer } from '../ha/peer.js';
import { loadVersion } from '../store/reader.js';
import type { MigrationMode, VmHost, VmRuntime } from './vm-runtime.js';
import { recoverLive } from './live-recovery.js';
import {
  afterIncomingCompleted,
  beforeStoreRecovery,
  incomingSourceLost,
  onIncomingResume,
  onIncomingStatus,
  onSourceLost,
  postcopySourceLost,
} from './decisions.js';
import { checkLeaseNotice, type PrepareReply, type PrepareRequest } from './protocol.js';
import { enableStreamTls, peerIdentity } from './stream-tls.js';

export type { PrepareRequest } from './protocol.js';

export class Destination {
  constructor(private readonly host: VmHost) {}

  async prepare(req: PrepareRequest, p: Peer): Promise<PrepareReply> {
    const h = this.host;
    const o = h.o;
    const r = h.runtime(req.vm);
    if (r.qemu) throw new Error(`VM ${req.vm} already has a QEMU on ${o.host}`);
    const vm = await r.store.vm();
    if (!vm) throw new Error(`no VM ${req.vm} in the store`);
    r.ramBytes = vm.ramBytes;
    r.mode = req.mode;
    r.finalVersion = undefined;
    r.migrationDone = false;
    await h.stop(r);
    r.ric = undefined;
    r.paths = vmPaths(o.runDir, `${req.vm}.${o.host}.in${Date.now()}`);
    createRamFile(r.paths.ram, vm.ramBytes);
    const ft = h.useFt(vm.argv[0]!);
    r.qemu = launchQemu({ argv: [...vm.argv, '-incoming', 'defer'], ramBytes: vm.ramBytes, paths: r.paths, logFd: h.qemuLog(req.vm), cwd: vm.cwd, ft, diesWithMigsafe: true });
    // Out-of-band QMP: migsafe-postcopy-fill must run even while the main loop waits for a page
    // the dead source will never send (a RIC round's `stop` waits for a blocked vCPU).
    r.qmp = await h.connectQmp(r, { oob: true });
    const qmp = r.qmp;
    r.incomingStatus = undefined;
    r.canFill = false;
    r.finalImageLoad = undefined;
    if (qmp.oob && req.mode !== 'precopy') {
      const cmds = await qmp.execute<{ name: string }[]>('query-commands').catch(() => []);
      r.canFill = cmds.some((c) => c.name === 'migsafe-postcopy-fill');
    }
    // Dirty tracking from before the guest runs here: the destination starts from the final FIC
    // image, so the bitmap names exactly the pages the guest writes here (all present: a hole is
    // never read), and the first RIC round is incremental too.
    if (ft) r.dirty = await h.openBitmap(r, 'incoming');
    await qmp.execute('migrate-set-capabilities', {
      capabilities: [
        { capability: 'events', state: true },
        { capability: 'postcopy-ram', state: req.mode !== 'precopy' },
      ],
    });
    // With TLS the incoming migration is TLS too: only a QEMU with a certificate the CA signed gets in.
    // From the one source certificate: that of the agent which asked, authenticated on this channel.
    if (o.tls) await enableStreamTls(qmp, { tls: o.tls, endpoint: 'server', runDir: o.runDir, qemu: vm.argv[0], allowIdentity: peerIdentity(p) });
    const { host, port: listenPort } = parseAddr(o.listen);
    const port = listenPort + 1;
    const uri = host.includes(':') ? `tcp:[${host}]:${port}` : `tcp:${host}:${port}`;
    await qmp.execute('migrate-incoming', { uri });
    r.peer = p;
    h.setRole(r, 'incoming', `QEMU pid ${r.qemu.pid} waits for ${req.vm} from ${req.from} on ${uri}${o.tls ? ' (TLS)' : ' (in clear: no --tls-*)'}`);
    p.startHeartbeat({ intervalMs: o.hbIntervalMs, timeoutMs: o.hbTimeoutMs });
    p.on('rtt', (ms: number) => o.metrics?.heartbeatRtt(req.vm, req.from, ms / 1000));
    p.on('event', (ev: string, data: Record<string, unknown>) => {
      if (ev === 'lease') {
        let n: { token: number; version: number };
        try {
          n = checkLeaseNotice(data);
        } catch (e) {
          h.note(r, `ignored a lease notice from ${req.from}: ${(e as Error).message}`);
          return;
        }
        r.lease.adopt(n.token);
        r.finalVersion = n.version;
        h.note(r, `lease handed over (token ${n.token}), final FIC version ${n.version}`);
      }
      if (ev === 'done') r.migrationDone = true;
    });
    const onEvent = (e: QmpEvent) => {
      if (e.event === 'RESUME') void onResume();
      if (e.event === 'MIGRATION') {
        const s = String(e.data?.status);
        r.incomingStatus = s;
        h.note(r, `destination migration status ${s}`);
        const next = onIncomingStatus(r.role, s);
        if (next === 'completed') void onCompleted();
        if (next === 'close-peer' && !p.closed) p.close();
      }
    };
    let resumed = false;
    let ricStarting: Promise<void> = Promise.resolve();
    const onResume = async () => {
      const next = onIncomingResume({ mode: req.mode, resumedBefore: resumed });
      resumed = true;
      if (next === 'nothing') return;
      h.setRole(r, 'postcopy-dst', 'the VM resumed here during post-copy; RIC on');
      ricStarting = this.startRic(r).catch((e: Error) => h.note(r, `RIC could not start: ${e.message}`));
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
      const next = afterIncomingCompleted({ hasLoop: r.ckpt !== undefined, hasDirtySource: r.dirty !== undefined });
      if (next === 'become-fic') r.ckpt!.becomeFic();
      if (next === 'start-fic') await this.startFicFromFinal(r);
      await h.publishAgent(r).catch(() => {});
      r.finalImageLoad = undefined;
      h.setRole(r, 'owner', `migration completed; ${r.ckpt ? 'FIC' : 'no checkpointing'} here`);
    };
    qmp.on('event', onEvent);
    const gen = (r.gen = (r.gen ?? 0) + 1);
    p.once('suspect', (why: string) => {
      if (r.gen === gen) void this.onSourceLost(r, String(why));
    });
    // The port only: the source builds the URI from the address it authenticated (protocol.ts).
    return { port, host: o.host, ...(o.tls ? { tls: true } : {}) };
  }

  /** Shadow = the final FIC image, which is what this destination started from. */
  finalImage(r: VmRuntime): Promise<{ image: Buffer; version: number }> {
    return (async () => {
      for (let i = 0; r.finalVersion === undefined && i < 50; i++) await sleep(20);
      // Kept while post-copy runs here (the checkpointer copies it into its shadow): a live
      // recovery needs exactly this image again, at once, and maybe while the first load runs.
      if (r.finalImageLoad && r.finalImageLoad.finalVersion === r.finalVersion) return r.finalImageLoad.p;
      const finalVersion = r.finalVersion;
      const p = loadVersion(r.store, finalVersion);
      r.finalImageLoad = { finalVersion, p };
      p.catch(() => {
        if (r.finalImageLoad?.p === p) r.finalImageLoad = undefined;
      });
      return p;
    })();
  }

  private async startRic(r: VmRuntime): Promise<void> {
    const h = this.host;
    const o = h.o;
    if (!h.checkpointing()) return;
    const qmp = r.qmp;
    const from = await this.finalImage(r);
    // Recovered or fenced meanwhile: that QEMU is gone, its successor has its own loop.
    if (r.qmp !== qmp || !r.qemu || r.ckpt) return;
    r.dirty ??= await openDirtySource({ ramPath: r.paths!.ram, ramBytes: r.ramBytes, postcopyDestination: true });
    const counts = r.dirty.watchThreshold !== undefined;
    const threshold = o.ricDirtyPages ?? 0;
    r.ric = {
      dirtySource: r.dirty.kind === 'bitmap' ? 'bitmap' : 'present-pages',
      dirtyPagesThreshold: counts && threshold > 0 ? threshold : null,
      note:
        !counts && threshold > 0
          ? 'no dirty-page count with the SEEK_DATA source (stock QEMU): the dirty-page threshold is off, rounds are periodic and on packets'
          : undefined,
    };
    h.startLoop(r, {
      kind: 'ric',
      dirty: r.dirty,
      intervalMs: o.ricIntervalMs,
      maxPages: 0,
      maxTimeMs: 0,
      bandwidth: 0,
      eventDriven: o.ricEvent,
      dirtyPagesThreshold: r.ric.dirtyPagesThreshold ?? 0,
      resumeFrom: from,
      reloadOnFailure: true,
    });
    h.note(
      r,
      `RIC on the ${r.ric.dirtySource} dirty source: every ${o.ricIntervalMs} ms` +
        (o.ricEvent ? ', on outgoing packets' : '') +
        (r.ric.dirtyPagesThreshold ? `, at ${r.ric.dirtyPagesThreshold} dirty pages` : '') +
        (r.ric.note ? ` (${r.ric.note})` : ''),
    );
  }

  private async startFicFromFinal(r: VmRuntime): Promise<void> {
    if (!this.host.checkpointing()) return;
    const from = await this.finalImage(r);
    // The bitmap tracked from before the guest ran here names what changed since the final image.
    this.host.startFic(r, from, r.dirty);
  }

  /** The source went silent (or its connection closed) while this side receives the VM. */
  private async onSourceLost(r: VmRuntime, why: string): Promise<void> {
    const h = this.host;
    const next = onSourceLost({ role: r.role, migrationDone: r.migrationDone ?? false });
    if (next === 'secure-lease') {
      h.note(r, `source lost (${why}) during post-copy`);
      let leaseOk = false;
      try {
        leaseOk = r.lease.token ? await r.lease.renew() : await h.ownership.takeLease(r.lease);
      } catch {
        leaseOk = false;
      }
      const how = postcopySourceLost({ leaseOk, canFill: r.canFill ?? false });
      if (how === 'fence') return h.fence(r, 'source lost and the store (lease) is out of reach');
      if (how === 'recover-live' && (await recoverLive(h, r, why, () => this.finalImage(r)))) return;
      if (beforeStoreRecovery({ role: r.role, migrationDone: r.migrationDone ?? false }) === 'nothing') return;
      await h.recoverHere(r, `source failed in post-copy (${why})`).catch((e: Error) => h.setRole(r, 'none', `recovery failed: ${e.message}`));
    }
    if (next === 'take-lease') {
      h.note(r, `source lost (${why}) before the VM ran here`);
      const gotLease = r.lease.token ? true : await h.ownership.takeLease(r.lease);
      if (incomingSourceLost({ gotLease }) === 'drop-incoming') {
        await h.drop(r);
        h.setRole(r, 'none', 'the source keeps the lease: it runs the VM');
        return;
      }
      await h.recoverHere(r, `source failed during ${r.mode} (${why})`).catch((e: Error) => h.setRole(r, 'none', `recovery failed: ${e.message}`));
    }
  }
}
