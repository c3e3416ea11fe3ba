// Compaction folds old versions into one base image so that a recovery reads a bounded amount:
// the base holds version B whole; versions before B are dropped, B keeps its device state.
import { native } from '../kernel/native.js';
import type { CheckpointStore } from './checkpoint-store.js';
import { encodeFrame, type CodecChoice } from './frame.js';
import { loadImage, planRestore } from './reader.js';

const SWITCH_LUA = `
-- KEYS: newBase, baseChunks, base, committed ; ARGV: version
if redis.call('ZSCORE', KEYS[4], ARGV[1]) == false then
  return redis.error_reply('version ' .. ARGV[1] .. ' is no longer committed')
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('SET', KEYS[3], ARGV[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[1])
return old
`;

const PAGES_PER_FRAME = 4096;

export interface CompactionResult {
  base: number;
  dropped: number[];
  baseBytes: number;
}

/** Folds every committed version up to `version` into the base. */
export async function compact(store: CheckpointStore, version: number, codec: CodecChoice): Promise<CompactionResult> {
  const plan = await planRestore(store, version);
  if (plan.chain.length === 0) return { base: plan.base, dropped: [], baseBytes: 0 };
  const { image } = await loadImage(store, plan);
  const n = native();
  const zero = Buffer.alloc(image.length);
  const tmp = `${store.keys.baseChunks}:new:${version}`;
  await store.redis.del(tmp);
  let baseBytes = 0;
  const pageCount = image.length / 4096;
  for (let first = 0; first < pageCount; first += PAGES_PER_FRAME) {
    const count = Math.min(PAGES_PER_FRAME, pageCount - first);
    const pages = Uint32Array.from({ length: count }, (_, i) => first + i);
    const raw = await n.encodeBatchAsync(image, zero, pages, { updateShadow: false, dense: true });
    if (raw.length === 0) continue;
    const frame = await encodeFrame('pages', raw, 0, codec);
    baseBytes += frame.length;
    await store.redis.rpush(tmp, frame);
  }
  // An all-zero guest still needs a base list to exist: one empty frame.
  if (baseBytes === 0) {
    const frame = await encodeFrame('pages', Buffer.alloc(0), 0, codec);
    baseBytes = frame.length;
    await store.redis.rpush(tmp, frame);
  }
  const k = store.keys;
  const dropped = ((await store.redis.eval(SWITCH_LUA, 4, tmp, k.baseChunks, k.base, k.committed, String(version))) as string[]).map(Number);
  if (dropped.length) {
    const pipe = store.redis.pipeline();
    for (const v of dropped) pipe.del(k.version(v), k.chunks(v), k.device(v));
    await pipe.exec();
  }
  // Version B's own chunks are now inside the base.
  await store.redis.del(k.chunks(version));
  return { base: version, dropped, baseBytes };
}
