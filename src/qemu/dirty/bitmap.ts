// The `bitmap` dirty source: the patched QEMU's fault-tolerance dirty log (DIRTY_MEMORY_FT).
import type { DirtySource, HarvestRequest } from './source.js';
import { FtClient, type FtBlock } from '../ft-client.js';
import { eventfdWaitAsync } from '../../kernel/ft-socket.js';

export interface BitmapSourceOptions {
  /**
   * Tracking is turned on before the guest runs from the state the shadow holds (a migration
   * destination that starts from the final FIC image): the first harvest is incremental too,
   * never "compare everything" (at a post-copy destination a full compare would read holes).
   */
  trackedFromStart?: boolean;
}

export class BitmapDirtySource implements DirtySource {
  readonly kind = 'bitmap' as const;
  private first: boolean;
  /** trackedFromStart: every page the bitmap has named since `start` (for reset()). */
  private written?: Uint8Array;
  private replayAll = false;
  private threshold?: { stop: boolean; loop: Promise<void> };
  private closed = false;

  private constructor(
    private readonly ft: FtClient,
    private readonly block: FtBlock,
    o: BitmapSourceOptions,
  ) {
    this.first = !o.trackedFromStart;
    if (o.trackedFromStart) this.written = new Uint8Array(block.length / 4096);
  }

  /** Connects to QEMU's migsafe-ft socket and turns tracking on for the guest RAM of `ramBytes`. */
  static async connect(socketPath: string, ramBytes: number, o: BitmapSourceOptions = {}): Promise<BitmapDirtySource> {
    const ft = await FtClient.connect(socketPath);
    const block = ft.blocks.find((b) => b.shared && b.length === ramBytes);
    if (!block) {
      ft.close();
      throw new Error(`QEMU's migsafe-ft reports no shared RAM block of ${ramBytes} bytes`);
    }
    ft.start();
    return new BitmapDirtySource(ft, block, o);
  }

  async harvest(req: HarvestRequest): Promise<Uint32Array> {
    await this.ft.harvest();
    const pages = this.ft.dirtyPages(this.block);
    const w = this.written;
    if (w) for (const p of pages) w[p] = 1;
    // Tracking began after the guest had run (this harvest marks where the log takes over),
    // or the shadow is a zero image: the log does not name every page that differs from it.
    if (this.first || req.shadowZero) {
      this.first = false;
      this.replayAll = false;
      return req.compareAll();
    }
    if (!w || !this.replayAll) return pages;
    this.replayAll = false;
    const all: number[] = [];
    for (let p = 0; p < w.length; p++) if (w[p]) all.push(p);
    return Uint32Array.from(all);
  }

  /**
   * The shadow was reloaded from an older committed version (a failed round): the next harvest
   * names every page changed since tracking started (trackedFromStart), else asks for a full compare.
   */
  reset(): void {
    if (this.written) this.replayAll = true;
    else this.first = true;
  }

  /**
   * Calls `onReached` whenever the pages dirtied since the last harvest reach `pages` (QEMU's
   * threshold eventfd; at most once per harvest). 0 turns it off.
   */
  watchThreshold(pages: number, onReached: () => void): void {
    void this.stopThreshold().then(() => {
      if (this.closed) return;
      this.ft.setThreshold(pages);
      if (!pages) return;
      const st = { stop: false, loop: Promise.resolve() };
      st.loop = (async () => {
        while (!st.stop) {
          // Off the event loop, in short waits so that stopping never waits long.
          const v = await eventfdWaitAsync(this.ft.thresholdFd, 250).catch(() => 0);
          if (v > 0 && !st.stop) onReached();
        }
      })();
      this.threshold = st;
    });
  }

  private async stopThreshold(): Promise<void> {
    const st = this.threshold;
    this.threshold = undefined;
    if (!st) return;
    st.stop = true;
    await st.loop;
    if (!this.closed) this.ft.setThreshold(0);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // The eventfd wait must be over before the fds are closed (a closed fd number can be reused).
    await this.stopThreshold();
    this.ft.close();
  }
}
