// V-Recover's live recovery at a post-copy destination whose source was lost (patched QEMU).
import { setTimeout as sleep } from 'node:timers/promises';
import { writeFileSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { RAM_BACKEND_ID } from '../qemu/launch.js';
import type { VmHost, VmRuntime } from './vm-runtime.js';

/**
 * The VM runs on HERE, same QEMU. QEMU's incoming side is postcopy-paused (the stream broke;
 * `migrate-pause` when the source is merely silent); every page the source had not sent yet is
 * placed from the final FIC image — the source's RAM at switchover, so exactly what it would
 * have sent (migsafe-postcopy-fill, out of band, wakes the vCPUs waiting for them) — and the
 * migration completes. RIC goes on as FIC (the destination's completion). False, with the VM
 * untouched, when this does not work: the caller restarts from the store.
 */
export async function recoverLive(
  h: VmHost,
  r: VmRuntime,
  why: string,
  finalImage: () => Promise<{ image: Buffer; version: number }>,
): Promise<boolean> {
  const qmp = r.qmp;
  const qemu = r.qemu;
  if (!qmp || !qemu || qmp.isClosed) return false;
  const t0 = performance.now();
  const status = () => (r.incomingStatus ?? '') as string;
  const file = join(h.o.runDir, `${r.vm}.${h.o.host}.fill${Date.now()}`);
  try {
    if (status() !== 'postcopy-paused') {
      // A source cut off (not dead) leaves the stream open: break it here.
      await qmp.executeOob('migrate-pause').catch(() => {});
      for (let i = 0; i < 100 && status() !== 'postcopy-paused' && status() !== 'completed'; i++) await sleep(50);
    }
    if (status() === 'completed') return true; // the last pages arrived after all
    if (status() !== 'postcopy-paused') throw new Error(`incoming migration is ${status() || 'unknown'}, not postcopy-paused`);
    const tPaused = performance.now();
    const from = await finalImage();
    const tLoaded = performance.now();
    writeFileSync(file, from.image, { mode: 0o600 });
    const tWritten = performance.now();
    // restored/copy: 0008 (the block's own contents from before the migration; older binaries: zeros)
    const res = await qmp.executeOob<{
      blocks: { name: string; present: number; filled: number; restored?: number; zeroed: number; copy?: boolean }[];
    }>('migsafe-postcopy-fill', { path: file, block: RAM_BACKEND_ID });
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
    // Live: 'load' is up to the final image written for QEMU, 'start' the fill of what was missing.
    h.o.metrics?.recovered(r.vm, { loadMs: tWritten - t0, startMs: ms - (tWritten - t0), totalMs: ms });
    r.finalImageLoad = undefined;
    h.note(
      r,
      `live recovery: QEMU pid ${qemu.pid} runs on, ${ms.toFixed(0)} ms (postcopy-paused after ${(tPaused - t0).toFixed(0)} ms, ` +
        `final image ${(tLoaded - tPaused).toFixed(0)} ms, file ${(tWritten - tLoaded).toFixed(0)} ms, fill ${(ms - (tWritten - t0)).toFixed(0)} ms; ` +
        `${sum || 'none missing'})`,
    );
    for (let i = 0; i < 200 && status() !== 'completed' && r.qemu === qemu; i++) await sleep(50);
    if (status() !== 'completed') h.note(r, `live recovery: incoming migration still ${status()} after the fill`);
    return true;
  } catch (e) {
    h.note(r, `live recovery not possible (${(e as Error).message}): restarting from the store`);
    return false;
  } finally {
    try {
      unlinkSync(file);
    } catch {
      /* not written */
    }
  }
}
