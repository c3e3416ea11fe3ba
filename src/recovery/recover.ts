// Non-live recovery: rebuild the RAM image from the store (everything verified first), start
// QEMU from the recorded command line on it, stream the device state in, and resume the guest.
import { writeFile } from 'node:fs/promises';
import { openSync, writeSync, closeSync, ftruncateSync } from 'node:fs';
import { launchQemu, type LaunchedQemu, type VmPaths } from '../qemu/launch.js';
import { QmpClient } from '../qemu/qmp.js';
import type { CheckpointStore } from '../store/checkpoint-store.js';
import { loadVersion, type LoadProgress, type RestorePlan } from '../store/reader.js';
import { RECOVERY_STEPS, type ProgressListener } from '../util/progress.js';

export interface RecoverOptions {
  store: CheckpointStore;
  /** Default: the newest committed version. */
  version?: number;
  paths: VmPaths;
  /** Where QEMU's own output goes (opened when QEMU starts, if a function). */
  logFd?: number | (() => number);
  onPlan?: (plan: RestorePlan) => void;
  onProgress?: (p: LoadProgress) => void;
  /** After the read: each of RECOVERY_STEPS as it starts (src/util/progress.ts), as a WorkProgress of op 'recovery'. */
  onStep?: ProgressListener;
  /** Replace the recorded QEMU binary (e.g. the patched build). */
  qemuBinary?: string;
  /** Decides, given the QEMU binary, whether to add the migsafe-ft object. */
  ft?: (qemuBinary: string) => boolean;
  /** The recovered QEMU dies with this process (LaunchOptions.diesWithMigsafe). */
  diesWithMigsafe?: boolean;
}

export interface Recovered {
  plan: RestorePlan;
  qemu: LaunchedQemu;
  qmp: QmpClient;
  /** QEMU was started with the migsafe-ft object (socket at paths.ft). */
  ft: boolean;
  /** The RAM image as restored: the checkpoint engine's starting shadow. */
  image: Buffer;
  pagesApplied: number;
  /** loadMs: read + verify; writeMs: the RAM and device-state files; startMs: QEMU up, device state in, running. */
  timings: { loadMs: number; writeMs: number; startMs: number; totalMs: number };
}

export async function recoverVm(o: RecoverOptions): Promise<Recovered> {
  const t0 = performance.now();
  // Nothing is written before the whole image and device state have been read and verified.
  const loaded = await loadVersion(o.store, o.version, { onPlan: o.onPlan, onProgress: o.onProgress });
  const plan = loaded.plan;
  const t1 = performance.now();
  const total = RECOVERY_STEPS.length - 1;
  const step = (done: number) => {
    try {
      o.onStep?.({ op: 'recovery', unit: 'steps', done, total, phase: RECOVERY_STEPS[done], version: plan.target.version });
    } catch {
      /* progress is news, never a reason for the recovery to fail */
    }
  };
  step(0);

  writeRam(o.paths.ram, loaded.image);
  await writeFile(o.paths.deviceState, loaded.deviceState, { mode: 0o600 });
  const tw = performance.now();

  const argv = [...plan.vm.argv];
  if (o.qemuBinary) argv[0] = o.qemuBinary;
  const ft = o.ft?.(argv[0]!) ?? false;
  step(1);
  const qemu = launchQemu({ argv, ramBytes: plan.vm.ramBytes, paths: o.paths, incoming: true, logFd: o.logFd, cwd: plan.vm.cwd, ft, diesWithMigsafe: o.diesWithMigsafe });
  let qmp: QmpClient;
  try {
    qmp = await Promise.race([
      QmpClient.connect(o.paths.qmp, 30_000),
      qemu.exited.then((c) => {
        throw new Error(`QEMU exited (${c}) before its QMP socket came up: see its log`);
      }),
    ]);
  } catch (e) {
    try {
      process.kill(qemu.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    throw e;
  }
  try {
    step(2);
    await qmp.execute('migrate-incoming', { uri: `exec:cat ${shellQuote(o.paths.deviceState)}` });
    await waitIncomingDone(qmp, 60_000);
    const st = await qmp.execute<{ status: string; running: boolean }>('query-status');
    if (!st.running) await qmp.execute('cont');
  } catch (e) {
    qmp.close();
    try {
      process.kill(qemu.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    throw new Error(`QEMU refused the device state of version ${plan.target.version}: ${(e as Error).message}`);
  }
  const t2 = performance.now();
  step(3);
  return {
    plan,
    qemu,
    qmp,
    ft,
    image: loaded.image,
    pagesApplied: loaded.pagesApplied,
    timings: { loadMs: t1 - t0, writeMs: tw - t1, startMs: t2 - tw, totalMs: t2 - t0 },
  };
}

function writeRam(path: string, image: Buffer): void {
  const fd = openSync(path, 'w', 0o600);
  try {
    ftruncateSync(fd, image.length);
    // Only non-zero pages: the file is sparse and zero-filled already. A run of non-zero pages
    // goes in one write (a write per page was ~half of a 1 GiB guest's start).
    const PAGE = 4096;
    const zero = Buffer.alloc(PAGE);
    const MAX_RUN = 64 << 20;
    let run = -1;
    const flush = (end: number) => {
      for (let off = run; off < end; off += MAX_RUN) {
        const len = Math.min(MAX_RUN, end - off);
        let put = 0;
        while (put < len) put += writeSync(fd, image, off + put, len - put, off + put);
      }
      run = -1;
    };
    for (let off = 0; off < image.length; off += PAGE) {
      const isZero = image.subarray(off, off + PAGE).equals(zero);
      if (!isZero && run < 0) run = off;
      else if (isZero && run >= 0) flush(off);
    }
    if (run >= 0) flush(image.length);
  } finally {
    closeSync(fd);
  }
}

async function waitIncomingDone(qmp: QmpClient, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
    if (m.status === 'completed') return;
    if (m.status === 'failed' || m.status === 'cancelled') {
      throw new Error(`incoming migration ${m.status}${m['error-desc'] ? `: ${m['error-desc']}` : ''}`);
    }
    const st = await qmp.execute<{ status: string }>('query-status');
    if (st.status === 'running' || st.status === 'paused') {
      if (m.status === undefined || m.status === 'none') {
        // QEMU 7.2 may report no migration status on the incoming side once done.
        if (st.status === 'running') return;
      }
    }
    if (Date.now() > deadline) throw new Error(`device state not loaded after ${timeoutMs} ms (status ${m.status})`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}
