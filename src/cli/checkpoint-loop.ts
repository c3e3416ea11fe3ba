// The sidecar's steady state: checkpoint one VM every interval until stopped or until QEMU goes.
import { native } from '../kernel/native.js';
import { CheckpointEngine } from '../checkpoint/engine.js';
import { runFic } from '../checkpoint/fic.js';
import { ScanDirtySource } from '../qemu/dirty/source.js';
import { BitmapDirtySource } from '../qemu/dirty/bitmap.js';
import type { QmpClient } from '../qemu/qmp.js';
import type { CheckpointStore } from '../store/checkpoint-store.js';
import type { CodecChoice } from '../store/frame.js';
import { fmtBytes, log } from './context.js';

export interface CheckpointLoopOptions {
  vm: string;
  store: CheckpointStore;
  qmp: QmpClient;
  ramPath: string;
  ramBytes: number;
  deviceStatePath: string;
  /** Resolves when the QEMU process ends, if migsafe started it. */
  qemuExited?: Promise<number | string>;
  intervalMs: number;
  maxPages: number;
  maxTimeMs: number;
  codec: CodecChoice;
  threads: number;
  compactEvery: number;
  resumeFrom?: { image: Buffer; version: number };
  /** Quit QEMU when migsafe is told to stop (run), or leave it alone (attach). */
  quitVmOnStop: boolean;
  /** The patched QEMU's migsafe-ft socket: dirty pages from its bitmap instead of a scan. */
  ftSocket?: string;
}

/** Returns the process exit code: 0 stopped or guest shut down, 3 QEMU died. */
export async function checkpointLoop(o: CheckpointLoopOptions): Promise<number> {
  const ram = native().mapFile(o.ramPath, o.ramBytes, false);
  const dirty = o.ftSocket ? await BitmapDirtySource.connect(o.ftSocket, o.ramBytes) : new ScanDirtySource();
  log(`${o.vm}: dirty pages from ${dirty.kind === 'bitmap' ? "QEMU's fault-tolerance dirty bitmap" : 'a compare of all guest RAM'}`);
  const engine = new CheckpointEngine({
    store: o.store,
    qmp: o.qmp,
    ram,
    dirty,
    codec: o.codec,
    deviceStatePath: o.deviceStatePath,
    maxPages: o.maxPages,
    maxTimeMs: o.maxTimeMs,
    threads: o.threads,
    resumeFrom: o.resumeFrom,
  });
  const stop = new AbortController();
  const onSignal = (sig: string) => {
    log(`${sig}: finishing the current round, then stopping`);
    stop.abort();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let exitStatus: number | string | undefined;
  let head = o.resumeFrom?.version ?? 0;
  void o.qemuExited?.then((c) => {
    exitStatus = c;
  });
  await runFic(engine, o.store, {
    intervalMs: o.intervalMs,
    compactEvery: o.compactEvery,
    codec: o.codec,
    signal: stop.signal,
    vmAlive: () => !o.qmp.isClosed,
    onRound: (m) => {
      head = m.version;
      log(
        `${o.vm}: version ${m.version} committed: ${m.pages} pages (${m.stage1Pages} live, ${m.stage2Pages} paused), ` +
          `${fmtBytes(m.bytesStored)} stored, pause ${m.pauseMs.toFixed(1)} ms`,
      );
    },
    onError: (e) => log(`${o.vm}: round failed: ${e.message}`),
    onCompact: (base, dropped) => log(`${o.vm}: compacted ${dropped} old versions into the base at version ${base}`),
  });
  await dirty.close();
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  if (stop.signal.aborted) {
    if (o.quitVmOnStop && !o.qmp.isClosed) {
      await o.qmp.execute('quit').catch(() => {});
      log(`${o.vm}: stopped; QEMU told to quit; last committed version ${head || 'none'}`);
    } else {
      log(`${o.vm}: stopped checkpointing; the VM keeps running; last committed version ${head || 'none'}`);
    }
    o.qmp.close();
    return 0;
  }
  // QMP went away: QEMU ended.
  if (o.qemuExited) exitStatus = await Promise.race([o.qemuExited, new Promise<undefined>((r) => setTimeout(r, 2000))]);
  o.qmp.close();
  if (exitStatus === 0) {
    log(`${o.vm}: QEMU exited normally (guest shut down); last committed version ${head || 'none'}`);
    return 0;
  }
  log(
    `${o.vm}: QEMU is gone (${exitStatus === undefined ? 'connection lost' : `exit ${exitStatus}`}); ` +
      `last committed version ${head || 'none'}. Recover with: migsafe recover --vm ${o.vm}`,
  );
  return 3;
}
