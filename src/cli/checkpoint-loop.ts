// The CLI's steady state over the shared checkpoint loop (src/checkpoint/checkpointer.ts):
// checkpoint one VM every interval until a signal or until QEMU goes, then say so and exit.
import { Checkpointer, type CheckpointerOptions } from '../checkpoint/checkpointer.js';
import { openDirtySource } from '../qemu/dirty/open.js';
import type { WriterLease } from '../ha/writer-lease.js';
import { fmtBytes } from './context.js';
import { logger } from './log.js';
import { Progress } from './progress.js';

/** What the shared loop needs from the CLI (the store, the VM's QMP and RAM, the settings). */
export type LoopSettings = Pick<
  CheckpointerOptions,
  'intervalMs' | 'maxPages' | 'maxTimeMs' | 'codec' | 'threads' | 'compactEvery'
>;

export interface CheckpointLoopOptions
  extends LoopSettings,
    Pick<CheckpointerOptions, 'store' | 'qmp' | 'ramPath' | 'ramBytes' | 'deviceStatePath' | 'resumeFrom' | 'metrics'> {
  vm: string;
  /** Resolves when the QEMU process ends, if migsafe started it. */
  qemuExited?: Promise<number | string>;
  /** QEMU's stdout and stderr, if migsafe started it: named when it ends unexpectedly. */
  qemuLog?: string;
  /** Quit QEMU when migsafe is told to stop (run), or leave it alone (attach). */
  quitVmOnStop: boolean;
  /** The patched QEMU's migsafe-ft socket: dirty pages from its bitmap instead of a scan. */
  ftSocket?: string;
  /** The VM's lease, which fences the store's commits: losing it ends the loop. */
  lease?: WriterLease;
}

/** Returns the process exit code: 0 stopped or guest shut down, 3 QEMU died, 4 another writer took the VM. */
export async function checkpointLoop(o: CheckpointLoopOptions): Promise<number> {
  const log = logger.child({ vm: o.vm });
  const dirty = await openDirtySource({ ftSocket: o.ftSocket, ramPath: o.ramPath, ramBytes: o.ramBytes });
  log.info({ dirtySource: dirty.kind }, `dirty pages from ${dirty.kind === 'bitmap' ? "QEMU's fault-tolerance dirty bitmap" : 'a compare of all guest RAM'}`);
  const progress = new Progress(log);
  let head = o.resumeFrom?.version ?? 0;
  const { vm: _vm, qemuExited: _exited, qemuLog: _qlog, quitVmOnStop: _quit, ftSocket: _ft, lease: _lease, ...loop } = o;
  let fenced: string | undefined;
  const ckpt = new Checkpointer({
    kind: 'fic',
    ...loop,
    dirty,
    log,
    onProgress: progress.report,
    formatRound: (m) =>
      `version ${m.version} committed: ${m.pages} pages (${m.stage1Pages} live, ${m.stage2Pages} paused), ` +
      `${fmtBytes(m.bytesStored)} stored, pause ${m.pauseMs.toFixed(1)} ms`,
    onRound: (m) => {
      head = m.version;
    },
    onFenced: (e) => {
      fenced ??= e.message;
    },
    reclaimLease: o.lease && (() => o.lease!.reclaim()),
  });
  o.lease?.whenLost((holder) => {
    fenced ??= `the lease was taken by ${holder}`;
    void ckpt.stop();
  });
  let stopped = false;
  const onSignal = (sig: string) => {
    log.info({ signal: sig }, `${sig}: finishing the current round, then stopping`);
    stopped = true;
    void ckpt.stop();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let exitStatus: number | string | undefined;
  void o.qemuExited?.then((c) => {
    exitStatus = c;
  });
  ckpt.start();
  await ckpt.done;
  await dirty.close();
  progress.close();
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  if (fenced !== undefined) {
    // Another writer owns the VM now: a QEMU this process started is a stale copy.
    if (o.quitVmOnStop && !o.qmp.isClosed) await o.qmp.execute('quit').catch(() => {});
    o.qmp.close();
    log.error(
      { version: head || undefined },
      `fenced off (${fenced}): another migsafe owns this VM now; ` +
        (o.quitVmOnStop ? 'QEMU told to quit' : 'checkpointing stopped, the VM was left alone') +
        `; last version committed here ${head || 'none'}`,
    );
    return 4;
  }
  if (stopped) {
    if (o.quitVmOnStop && !o.qmp.isClosed) {
      await o.qmp.execute('quit').catch(() => {});
      log.info({ version: head || undefined }, `stopped; QEMU told to quit; last committed version ${head || 'none'}`);
    } else {
      log.info({ version: head || undefined }, `stopped checkpointing; the VM keeps running; last committed version ${head || 'none'}`);
    }
    o.qmp.close();
    return 0;
  }
  // QMP went away: QEMU ended.
  if (o.qemuExited) exitStatus = await Promise.race([o.qemuExited, new Promise<undefined>((r) => setTimeout(r, 2000))]);
  o.qmp.close();
  if (exitStatus === 0 && head === 0) {
    // Nothing was ever checkpointed: likelier a guest that never came up than a shutdown.
    log.warn(
      { exit: 0 },
      'QEMU exited normally (status 0) before the first checkpoint was committed: the guest shut down at once, or did not boot ' +
        '(under -no-reboot a guest that resets exits 0 too: a triple fault, a kernel and initrd that do not fit in -m); ' +
        `see the guest's console and ${o.qemuLog ?? "QEMU's log"}; nothing was checkpointed`,
    );
    return 0;
  }
  if (exitStatus === 0) {
    log.info({ version: head || undefined }, `QEMU exited normally (guest shut down); last committed version ${head || 'none'}`);
    return 0;
  }
  log.error(
    { version: head || undefined, exit: exitStatus },
    `QEMU is gone (${exitStatus === undefined ? 'connection lost' : `exit ${exitStatus}`}); ` +
      `last committed version ${head || 'none'}. Recover with: migsafe recover --vm ${o.vm}`,
  );
  return 3;
}
