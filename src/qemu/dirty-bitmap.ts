// The `bitmap` dirty source: the patched QEMU's fault-tolerance dirty log (DIRTY_MEMORY_FT).
import { spawnSync } from 'node:child_process';
import type { DirtySource } from './dirty-source.js';
import { FtClient, type FtBlock } from './ft-client.js';

export class BitmapDirtySource implements DirtySource {
  readonly kind = 'bitmap' as const;
  private first = true;

  private constructor(
    private readonly ft: FtClient,
    private readonly block: FtBlock,
  ) {}

  /** Connects to QEMU's migsafe-ft socket and turns tracking on for the guest RAM of `ramBytes`. */
  static async connect(socketPath: string, ramBytes: number): Promise<BitmapDirtySource> {
    const ft = await FtClient.connect(socketPath);
    const block = ft.blocks.find((b) => b.shared && b.length === ramBytes);
    if (!block) {
      ft.close();
      throw new Error(`QEMU's migsafe-ft reports no shared RAM block of ${ramBytes} bytes`);
    }
    ft.start();
    return new BitmapDirtySource(ft, block);
  }

  async harvest(): Promise<Uint32Array | null> {
    await this.ft.harvest();
    if (this.first) {
      // Tracking began after the guest had run: the first round compares everything, and
      // this harvest marks where the log takes over.
      this.first = false;
      return null;
    }
    return this.ft.dirtyPages(this.block);
  }

  async close(): Promise<void> {
    this.ft.close();
  }
}

/** Whether a QEMU binary has the migsafe-ft object (the patched build). */
export function qemuHasFt(qemuBinary: string): boolean {
  const r = spawnSync(qemuBinary, ['-object', 'help'], { encoding: 'utf8', timeout: 10_000 });
  return r.status === 0 && /\bmigsafe-ft\b/.test(r.stdout ?? '');
}
