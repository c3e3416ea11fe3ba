// Forward incremental checkpointing: a round every I ms until told to stop, with compaction
// so that recovery reads a bounded number of versions.
import { setTimeout as sleep } from 'node:timers/promises';
import type { CheckpointEngine } from './engine.js';
import type { CheckpointStore } from '../store/checkpoint-store.js';
import { compact } from '../store/compaction.js';
import type { CodecChoice } from '../store/frame.js';
import type { VersionMeta } from '../store/version-meta.js';

export interface FicOptions {
  intervalMs: number;
  /** Fold old versions into the base once more than 2×K are committed (0: never). */
  compactEvery: number;
  codec: CodecChoice;
  signal: AbortSignal;
  /** Stop when this returns false (e.g. QEMU has exited). */
  vmAlive: () => boolean;
  onRound?: (m: VersionMeta) => void;
  onError?: (e: Error) => void;
  onCompact?: (base: number, dropped: number) => void;
}

export async function runFic(engine: CheckpointEngine, store: CheckpointStore, o: FicOptions): Promise<void> {
  while (!o.signal.aborted && o.vmAlive()) {
    const t0 = performance.now();
    try {
      const meta = await engine.round();
      o.onRound?.(meta);
      if (o.compactEvery > 0) {
        const committed = await store.committed();
        if (committed.length > 2 * o.compactEvery) {
          const upTo = committed[committed.length - o.compactEvery]!;
          const r = await compact(store, upTo, o.codec);
          o.onCompact?.(r.base, r.dropped.length);
        }
      }
    } catch (e) {
      if (!o.vmAlive() || o.signal.aborted) break;
      o.onError?.(e as Error);
    }
    const wait = o.intervalMs - (performance.now() - t0);
    if (wait > 0) await sleep(wait, undefined, { signal: o.signal }).catch(() => {});
  }
}
