// A version's RAM image built page by page, newest version first, for lazy recovery: each page
// is announced the moment its contents are final and verified, long before the whole image is.
// Newest first because a page's newest record decides whether anything older matters: a whole
// page (or zero) record makes it final at once, a delta waits for the older records under it
// (to the end, for a delta with none: it applies to a zero page, as in the eager reader).
// Within a version, its paused stage goes before its live stage (see below). Every record is applied by applyBatch, which checks the page's CRC32C after
// it, and every frame's checksum and binding are checked as the eager reader checks them.
import { setImmediate as turn } from 'node:timers/promises';
import { applyBatch, batchPages, batchRecords } from '../kernel/page-delta.js';
import { RecordKind } from '../kernel/index.js';
import type { ChunkList, CheckpointStore } from './checkpoint-store.js';
import { CorruptCheckpointError, decodeFrame, type FrameBinding } from './frame.js';
import type { RestorePlan } from './reader.js';
import type { PageIndex } from './page-index.js';

const PAGE = 4096;
const RECORD_HEADER_BYTES = 16;
/** Frames read (and decompressed, on the addon's threads) at a time. */
const SLICE = 8;

/** A list of a plan, as the lazy readers read it. */
export interface ListRead {
  list: ChunkList;
  version: number;
  where: string;
  bind: Omit<FrameBinding, 'index'>;
  expect: number;
  pages?: number;
  /** Records of the version's paused stage, at the end of its list. */
  stage2?: number;
  /** Its stripes on a cluster (a stored descriptor, stripes.ts). */
  stripes?: string;
  /** Bytes of its page index, by its metadata (page-index.ts); undefined: it has none. */
  indexBytes?: number;
}

type DecodedPages = Awaited<ReturnType<typeof decodeFrame>>;

/** A record waiting for the older ones under it: its bytes and where it came from. */
interface Held {
  rec: Buffer;
  version: number;
  chunk: number;
}

export interface LazyHooks {
  /** These pages are final and verified (each announced once). */
  onReady: (pages: number[]) => void;
  /** Frames read so far and in all. */
  onProgress?: (p: { done: number; total: number }) => void;
  /** Asked between slices: give up (the VM being served is gone). */
  stopped?: () => boolean;
  /**
   * With page indexes (one per list, oldest first): every frame read is checked against its
   * list's index, and pages `final` already holds (placed by the fault path, lazy-fetch.ts)
   * are left as they are.
   */
  indexed?: { indexes: readonly PageIndex[]; final: Uint8Array };
  /** Awaited before each read from the store: the read waits while the guest waits for a fault. */
  pause?: () => Promise<void> | undefined;
}

/** The target version's device state, checked (read first: small, and needed first). */
export async function readDeviceState(store: CheckpointStore, plan: RestorePlan): Promise<Buffer> {
  const target = plan.target;
  const where = `VM "${store.vmId}" version ${target.version}, device state`;
  const dev = await store.deviceState(target.version);
  if (!dev) throw new CorruptCheckpointError(`${where} is missing`);
  const d = await decodeFrame(dev, { kind: 'device', bind: { vm: store.vmId, version: target.version, list: 'device', index: 0 }, rawBytes: target.deviceStateBytes }, where);
  return d.raw;
}

/** The lists of a plan, oldest first, with their frame counts checked against the metadata. */
export async function listsOf(store: CheckpointStore, plan: RestorePlan): Promise<ListRead[]> {
  const vm = store.vmId;
  const lists: ListRead[] = [];
  if (plan.base) {
    lists.push({
      list: 'base', version: plan.base, where: `VM "${vm}" base image (version ${plan.base})`, bind: { vm, version: plan.base, list: 'base' }, expect: plan.baseChunks,
      stripes: plan.baseStripes, indexBytes: plan.baseIndexBytes,
    });
  }
  for (const m of plan.chain) {
    lists.push({
      list: m.version, version: m.version, where: `VM "${vm}" version ${m.version}`, bind: { vm, version: m.version, list: 'version' }, expect: m.chunks, pages: m.pages,
      stage2: m.stage2Pages, stripes: m.stripes, indexBytes: m.indexBytes,
    });
  }
  let lengths: number[];
  try {
    lengths = await Promise.all(lists.map((l) => store.chunkCount(l.list, l.stripes)));
  } catch (e) {
    throw new CorruptCheckpointError((e as Error).message); // a malformed stripe descriptor
  }
  lists.forEach((l, i) => {
    if (lengths[i] !== l.expect) throw new CorruptCheckpointError(`${l.where}: ${lengths[i]} chunks in the store, its metadata says ${l.expect}`);
    if (l.expect === 0 && l.pages) throw new CorruptCheckpointError(`${l.where}: no frames, its metadata says ${l.pages} page records`);
  });
  return lists;
}

/** The whole-page kinds: final without anything older. */
const selfContained = (k: RecordKind) => k === RecordKind.Zero || k === RecordKind.Full || k === RecordKind.PlanesLz4;

/**
 * Fills `image` (zeroed, plan.vm.ramBytes long) with the plan's version, announcing pages as
 * they become final. Throws CorruptCheckpointError — naming the page and version where a page
 * fails its check — on anything the eager reader would refuse.
 */
export async function loadNewestFirst(store: CheckpointStore, plan: RestorePlan, image: Buffer, hooks: LazyHooks): Promise<{ pagesApplied: number }> {
  const ramPages = plan.vm.ramBytes / PAGE;
  if (image.length !== plan.vm.ramBytes) throw new RangeError(`image of ${image.length} bytes for ${plan.vm.ramBytes} of RAM`);
  const lists = await listsOf(store, plan);
  const total = lists.reduce((a, l) => a + l.expect, 0);
  const final = hooks.indexed?.final ?? new Uint8Array(ramPages);
  const indexes = hooks.indexed?.indexes;
  const held = new Map<number, Held[]>(); // newest first
  let done = 0;
  let pagesApplied = 0;

  const apply = (rec: Buffer, page: number, version: number, chunk: number) => {
    try {
      applyBatch(image, rec);
    } catch (e) {
      throw new CorruptCheckpointError(
        `page ${page} (guest address 0x${(page * PAGE).toString(16)}) of VM "${store.vmId}" version ${version} (chunk ${chunk}) fails its check: ${(e as Error).message}`,
      );
    }
  };
  /** Page `p` has its oldest needed record applied (or is zero): the held newer ones go on top. */
  const finish = (p: number, ready: number[]) => {
    const h = held.get(p);
    if (h) {
      for (let i = h.length - 1; i >= 0; i--) apply(h[i]!.rec, p, h[i]!.version, h[i]!.chunk);
      held.delete(p);
    }
    final[p] = 1;
    ready.push(p);
  };

  /** One frame's records, each newer than every record taken before it. Returns their count. */
  const take = (l: ListRead, frame: DecodedPages, chunk: number, once?: Uint8Array, oldest?: { mark: number }): number => {
    // `oldest`: the live stage of the oldest list, where each record is its page's first and
    // applies to a zero page, whatever its kind. Its writers (the engine's stage 1, compaction)
    // write it in page order, so a page below the last one seen that it has not held is in no
    // list at all: zero (or deltas onto zero) — final without waiting for the end of the read.
    const decides = (k: RecordKind) => oldest !== undefined || selfContained(k);
    const from = oldest?.mark ?? 0;
    const ready: number[] = [];
    // Walk the records once: their framing, the count, and whether the fast path holds.
    const recs: { page: number; kind: RecordKind; start: number; end: number }[] = [];
    let whole = true;
    try {
      for (const r of batchRecords(frame.raw)) {
        if (r.page >= ramPages) throw new RangeError(`page ${r.page} is beyond the ${ramPages} pages of RAM`);
        if (once) {
          // Taken first to last, a page twice would have been announced on its older record.
          if (once[r.page]) throw new RangeError(`page ${r.page} appears twice in the live stage`);
          once[r.page] = 1;
        }
        if (oldest) {
          if (r.page <= oldest.mark && oldest.mark >= 0) throw new RangeError(`page ${r.page} after page ${oldest.mark}: the live stage is not in page order`);
          oldest.mark = r.page;
        }
        const end = r.payload.byteOffset - frame.raw.byteOffset + r.length;
        recs.push({ page: r.page, kind: r.kind, start: end - r.length - RECORD_HEADER_BYTES, end });
        if (final[r.page] || held.has(r.page) || !decides(r.kind)) whole = false;
      }
    } catch (e) {
      throw new CorruptCheckpointError(`${l.where}, chunk ${chunk}: ${(e as Error).message}`);
    }
    if (recs.length !== frame.count) throw new CorruptCheckpointError(`${l.where}, chunk ${chunk}: ${recs.length} page records, its header says ${frame.count}`);
    if (indexes) {
      const { pages, kinds } = batchPages(frame.raw);
      indexes[lists.indexOf(l)]!.checkFrame(chunk, pages, kinds);
    }
    const raw = Buffer.from(frame.raw.buffer, frame.raw.byteOffset, frame.raw.byteLength);
    if (whole) {
      // Whole pages nothing newer holds: the frame goes in at once (applyBatch is all or nothing).
      try {
        applyBatch(image, raw);
      } catch {
        for (const r of recs) apply(raw.subarray(r.start, r.end), r.page, l.version, chunk); // to name the page
      }
      for (const r of recs) ((final[r.page] = 1), ready.push(r.page));
    } else {
      // Layer 0: this frame's deciding records; layer k: the k-th newer record held for those
      // pages. A layer names each page once, so it goes in as one batch (a call per record
      // was most of the time on a version whose pages newer versions hold deltas of).
      const layers: Held[][] = [];
      const put = (d: number, h: Held & { page: number }) => (layers[d] ??= []).push(h);
      for (const r of recs) {
        if (final[r.page]) {
          held.delete(r.page); // decided by a newer whole-page record, or placed by the fault path
          continue;
        }
        const rec = raw.subarray(r.start, r.end);
        if (decides(r.kind)) {
          put(0, { rec, version: l.version, chunk, page: r.page });
          const h = held.get(r.page);
          if (h) for (let i = h.length - 1; i >= 0; i--) put(h.length - i, { ...h[i]!, page: r.page });
          held.delete(r.page);
          final[r.page] = 1;
          ready.push(r.page);
        } else {
          const h = held.get(r.page);
          if (h) h.push({ rec, version: l.version, chunk });
          else held.set(r.page, [{ rec, version: l.version, chunk }]);
        }
      }
      for (const layer of layers) {
        try {
          applyBatch(image, Buffer.concat(layer.map((h) => h.rec)));
        } catch {
          for (const h of layer as (Held & { page: number })[]) apply(h.rec, h.page, h.version, h.chunk); // to name the page
        }
      }
    }
    if (oldest) for (let p = Math.max(0, from + 1); p < oldest.mark; p++) if (!final[p]) finish(p, ready);
    hooks.onProgress?.({ done: ++done, total });
    if (ready.length) hooks.onReady(ready);
    return recs.length;
  };

  for (let li = lists.length - 1; li >= 0; li--) {
    const l = lists[li]!;
    const fetch = (first: number, last: number) => {
      const p = Promise.resolve(hooks.pause?.()).then(() => store.chunkRange(l.list, first, last, l.stripes)).then((frames) => {
        if (frames.length !== last - first + 1) {
          throw new CorruptCheckpointError(`${l.where}: the store returned ${frames.length} of frames ${first}..${last} (the list shrank while it was read)`);
        }
        return Promise.all(frames.map((f, j) => decodeFrame(f, { kind: 'pages', bind: { ...l.bind, index: first + j }, maxRecords: ramPages }, `${l.where}, chunk ${first + j}`)));
      });
      p.catch(() => {}); // awaited later; not an unhandled rejection meanwhile
      return p;
    };
    // A version's paused stage (its last stage2Pages records) may hold pages of its live stage
    // again, applying to them: those frames go last to first. The live stage holds each page
    // once (as the base does), so the rest goes first to last — low memory, where the guest's
    // kernel is and what QEMU touches while it loads the device state, early.
    let records = 0;
    let low = l.expect;
    while (low > 0 && records < (l.stage2 ?? 0)) {
      const first = low - 1; // a frame at a time: no further into the live stage than needed
      const frames = await fetch(first, low - 1);
      if (hooks.stopped?.()) return { pagesApplied };
      for (let j = frames.length - 1; j >= 0; j--) {
        records += take(l, frames[j]!, first + j);
        await turn();
      }
      low = first;
    }
    const once = new Uint8Array(ramPages);
    const order = li === 0 ? { mark: -1 } : undefined;
    let next = low > 0 ? fetch(0, Math.min(SLICE, low) - 1) : undefined;
    for (let at = 0; next; at += SLICE) {
      const frames = await next;
      next = at + SLICE < low ? fetch(at + SLICE, Math.min(at + 2 * SLICE, low) - 1) : undefined;
      if (hooks.stopped?.()) return { pagesApplied };
      for (let j = 0; j < frames.length; j++) {
        records += take(l, frames[j]!, at + j, once, order);
        // The pages are served from this process too: a page request must not wait for the
        // whole read (awaiting a settled fetch would let no I/O in).
        await turn();
      }
    }
    if (l.pages !== undefined && records !== l.pages) {
      throw new CorruptCheckpointError(`${l.where}: ${records} page records in its frames, its metadata says ${l.pages}`);
    }
    pagesApplied += records;
  }
  // What no list's oldest record reached: deltas onto a zero page (as the eager reader applies
  // them onto its zero image), and pages no version holds, which are zero.
  const ready: number[] = [];
  for (let p = 0; p < ramPages; p++) if (!final[p]) finish(p, ready);
  if (ready.length) hooks.onReady(ready);
  return { pagesApplied };
}
