// Which dirty source a checkpoint loop gets: the patched QEMU's bitmap when QEMU was given the
// migsafe-ft object, else SEEK_DATA's present pages at a post-copy destination, else a scan.
import { spawnSync } from 'node:child_process';
import type { DirtySource } from './source.js';
import { BitmapDirtySource } from './bitmap.js';
import { PresentPagesDirtySource } from './present-pages.js';
import { ScanDirtySource } from './scan.js';

export type DirtySourceChoice = 'auto' | 'bitmap' | 'scan';

export interface OpenDirtySourceOptions {
  /** The patched QEMU's migsafe-ft socket, when QEMU has the object (see useFt): its bitmap. */
  ftSocket?: string;
  ramPath: string;
  ramBytes: number;
  /**
   * The bitmap tracks from before the guest runs from the state the shadow holds (a migration
   * destination that starts from the final FIC image): its first harvest is incremental too.
   */
  trackedFromStart?: boolean;
  /** Without the bitmap, only the pages present in the RAM file may be read (post-copy holes). */
  postcopyDestination?: boolean;
}

/** Throws when the bitmap was asked for (ftSocket) and cannot be used. */
export async function openDirtySource(o: OpenDirtySourceOptions): Promise<DirtySource> {
  if (o.ftSocket) return BitmapDirtySource.connect(o.ftSocket, o.ramBytes, { trackedFromStart: o.trackedFromStart });
  if (o.postcopyDestination) return new PresentPagesDirtySource(o.ramPath);
  return new ScanDirtySource();
}

const ftKnown = new Map<string, boolean>();

/** Whether a QEMU binary has the migsafe-ft object (the patched build); asked once per binary. */
export function qemuHasFt(qemuBinary: string): boolean {
  let has = ftKnown.get(qemuBinary);
  if (has === undefined) {
    const r = spawnSync(qemuBinary, ['-object', 'help'], { encoding: 'utf8', timeout: 10_000 });
    has = r.status === 0 && /\bmigsafe-ft\b/.test(r.stdout ?? '');
    ftKnown.set(qemuBinary, has);
  }
  return has;
}

/** Whether to give QEMU the migsafe-ft object (the `bitmap` dirty source) for `--dirty-source want`. */
export function useFt(want: DirtySourceChoice, qemuBinary: string): boolean {
  if (want === 'scan') return false;
  const has = qemuHasFt(qemuBinary);
  if (want === 'bitmap' && !has) {
    throw new Error(
      `--dirty-source bitmap: ${qemuBinary} has no migsafe-ft object; build the patched QEMU ` +
        '(qemu-patches/build.sh) and run that binary, or use --dirty-source scan',
    );
  }
  return has;
}
