// Compaction folds old versions into one base image so that a recovery reads a bounded amount:
// the base holds version B whole; versions before B are dropped, B keeps its device state.
import { encodeBatchAsync } from '../kernel/page-delta.js';
import type { CheckpointStore } from './checkpoint-store.js';
import type { CodecChoice } from './frame.js';
import { loadImage, planRestore } from './reader.js';
import type { ProgressListener } from '../util/progress.js';

const PAGES_PER_FRAME = 4096;

export interface CompactionResult {
  base: number;
  dropped: number[];
  baseBytes: number;
}

/** Folds every committed version up to `version` into the base; `onProgress`: pages written into it. */
export async function compact(store: CheckpointStore, version: number, codec: CodecChoice, onProgress?: ProgressListener): Promise<CompactionResult> {
  const plan = await planRestore(store, version);
  if (plan.chain.length === 0) return { base: plan.base, dropped: [], baseBytes: 0 };
  const { image } = await loadImage(store, plan);
  const zero = Buffer.alloc(image.length);
  const pending = await store.beginBase(version);
  let baseBytes = 0;
  const pageCount = image.length / 4096;
  const report = (done: number, finished?: boolean) =>
    onProgress?.({ op: 'compaction', version, done, total: pageCount, unit: 'pages', ...(finished ? { finished } : {}) });
  report(0);
  for (let first = 0; first < pageCount; first += PAGES_PER_FRAME) {
    const count = Math.min(PAGES_PER_FRAME, pageCount - first);
    if (first) report(first);
    const pages = Uint32Array.from({ length: count }, (_, i) => first + i);
    const raw = await encodeBatchAsync(image, zero, pages, { updateShadow: false, dense: true });
    if (raw.length === 0) continue;
    baseBytes += await pending.addPages(raw, codec);
  }
  // An all-zero guest still needs a base list to exist: one empty frame.
  if (baseBytes === 0) baseBytes = await pending.addPages(Buffer.alloc(0), codec);
  const dropped = await pending.install();
  report(pageCount, true);
  return { base: version, dropped, baseBytes };
}
