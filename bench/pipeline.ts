// What the checkpoint benchmarks share: a RAM image built from real guest page pairs
// (../shared/corpus) and one checkpoint round over it as the engine runs one — detect (SIMD
// compare of all RAM with the shadow) → encode → compress → Redis commit — timed per phase.
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { native } from '../src/kernel/native.js';
import { summarizeBatch } from '../src/kernel/page-delta.js';
import type { CheckpointStore } from '../src/store/checkpoint-store.js';
import { encodeFrame, parseCodec } from '../src/store/frame.js';
import type { VersionMeta } from '../src/store/version-meta.js';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CORPUS = process.env.MIGSAFE_CORPUS ?? resolve(ROOT, '..', 'shared', 'corpus');
export const PAGE = 4096;

export type Image = ReturnType<typeof buildImage>;

/** RAM and shadow of `ramPages` pages; the corpus pairs are spread over it (old in the shadow, new in RAM). */
export function buildImage(ramPages: number, corpus = CORPUS) {
  const files = readdirSync(corpus).filter((f) => f.endsWith('.pairs')).sort();
  if (!files.length) throw new Error(`no .pairs files in ${corpus} (set MIGSAFE_CORPUS)`);
  const pairs: Buffer[] = files.map((f) => readFileSync(join(corpus, f)));
  const total = pairs.reduce((a, p) => a + p.length / (2 * PAGE), 0);
  // Every other page is dirty: the corpus, repeated (or cut short in a small image), so the
  // compare of all RAM is amortized over as many dirty pages as a busy round has.
  const room = Math.floor(ramPages / 2);
  if (room < 1) throw new Error(`a RAM image of ${ramPages} pages has no room for dirty pages`);
  const ram = Buffer.alloc(ramPages * PAGE);
  const shadow0 = Buffer.alloc(ramPages * PAGE);
  // Background: identical non-zero pages (a guest's clean memory) so the compare reads real data.
  for (let p = 0; p < ramPages; p++) ram.writeUInt32LE(p + 1, p * PAGE);
  ram.copy(shadow0);
  const copies = Math.max(1, Math.floor(room / total));
  let slot = 0;
  for (let c = 0; c < copies && slot < room; c++) {
    for (const buf of pairs) {
      for (let off = 0; off < buf.length && slot < room; off += 2 * PAGE) {
        const p = slot++ * 2;
        buf.copy(shadow0, p * PAGE, off, off + PAGE);
        buf.copy(ram, p * PAGE, off + PAGE, off + 2 * PAGE);
      }
    }
  }
  return { ram, shadow0, dirty: slot, files };
}

/** Empties the benchmark VM's keys and records it again, for the next round to start from nothing. */
export async function resetStore(store: CheckpointStore, img: Image): Promise<void> {
  await store.deleteAll();
  await store.init(['bench'], img.ram.length);
}

export interface Round {
  pages: number;
  meta: VersionMeta;
  /** ms of: detect, encode, compress, commit (frames written, commit script, durability wait). */
  phaseMs: [number, number, number, number];
  totalMs: number;
}

/** Scratch buffers a round reuses: the shadow it compares against and a 200 KiB device state. */
export function roundScratch(img: Image) {
  return { shadow: Buffer.alloc(img.ram.length), device: Buffer.alloc(200 * 1024, 7) };
}

/** One full checkpoint round of `img` (shadow reset first) into `store` under codec `codecSpec`. */
export async function checkpointRound(store: CheckpointStore, img: Image, codecSpec: string, scratch: ReturnType<typeof roundScratch>): Promise<Round> {
  const n = native();
  const codec = parseCodec(codecSpec);
  const { shadow, device } = scratch;
  img.shadow0.copy(shadow);
  const t0 = performance.now();
  const pending = await store.begin(0);
  const dirty = n.scanDirty(img.ram, shadow);
  const t1 = performance.now();
  let pages = 0;
  const raws: { raw: Buffer; records: number }[] = [];
  for (let at = 0; at < dirty.length; at += 4096) {
    const raw = await n.encodeBatchAsync(img.ram, shadow, dirty.subarray(at, at + 4096), { dense: true }); // as the engine does
    const st = summarizeBatch(raw);
    pages += st.records;
    raws.push({ raw, records: st.records });
  }
  const t2 = performance.now();
  const framesOut: Buffer[] = [];
  for (const [i, r] of raws.entries()) framesOut.push(await encodeFrame('pages', r.raw, r.records, codec, pending.chunkBinding(i)));
  const dev = await encodeFrame('device', device, 0, codec, pending.deviceBinding());
  const t3 = performance.now();
  for (const f of framesOut) pending.addChunk(f);
  pending.setDeviceState(dev);
  const meta = await pending.commit({
    pages, bytesRaw: pages * PAGE, pauseMs: 0, deviceStateBytes: device.length, dirtySource: 'scan',
    codec: codecSpec, stage1Pages: pages, stage2Pages: 0,
  });
  const t4 = performance.now();
  return { pages, meta, phaseMs: [t1 - t0, t2 - t1, t3 - t2, t4 - t3], totalMs: t4 - t0 };
}
