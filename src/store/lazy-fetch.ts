// The fault path of lazy recovery: a page the guest waits for is built from just the frames
// that hold its records (by the page indexes, page-locator.ts), fetched on a connection of
// their own while the background read (lazy-image.ts) goes on. Each frame is checked as the
// background read checks it (checksum, binding) and against its list's index; each page's
// CRC32C after its records are applied. A frame fetched for one page also places every other
// page it completes: the guest's next faults are mostly near its last.
import { applyBatch, batchPages } from '../kernel/page-delta.js';
import type { CheckpointStore } from './checkpoint-store.js';
import { CorruptCheckpointError, decodeFrame } from './frame.js';
import type { ListRead } from './lazy-image.js';
import { decodePageIndex, type PageIndex } from './page-index.js';
import { PageLocator, type FrameRef } from './page-locator.js';
import type { RestorePlan } from './reader.js';

const PAGE = 4096;
/** Decoded frames kept for the next faults (a base or stage-1 frame is up to 16 MiB). */
const CACHE_BYTES = 64 << 20;

interface Decoded {
  raw: Buffer;
  offsets: Uint32Array;
  /** Page → its record's position in the frame. */
  at: Map<number, number>;
}

/**
 * The page indexes of every list of a plan (oldest first), or why lazy recovery goes without:
 * a list with none (written by an older migsafe), or one refused (corrupt, foreign, truncated).
 * An index is used for all lists or for none: a list without one could hold any page.
 */
export async function loadIndexes(store: CheckpointStore, plan: RestorePlan, lists: readonly ListRead[]): Promise<{ indexes: PageIndex[] } | { why: string }> {
  const missing = lists.find((l) => l.indexBytes === undefined);
  if (missing) return { why: `${missing.where} has no page index (written by an older migsafe)` };
  const bufs = await Promise.all(lists.map((l) => store.pageIndex(l.list)));
  const ramPages = plan.vm.ramBytes / PAGE;
  const indexes: PageIndex[] = [];
  for (const [i, l] of lists.entries()) {
    const buf = bufs[i];
    if (!buf) return { why: `${l.where}: its page index is missing from the store` };
    try {
      const bind = { vm: store.vmId, version: l.version, list: l.bind.list as 'version' | 'base', frames: l.expect };
      indexes.push(decodePageIndex(buf, { bind, bytes: l.indexBytes!, ramPages, records: l.pages }, l.where));
    } catch (e) {
      if (!(e instanceof CorruptCheckpointError)) throw e;
      return { why: e.message };
    }
  }
  return { indexes };
}

export interface FaultStats {
  /** Pages asked for that were not final yet, frames fetched for them, pages they placed. */
  faults: number;
  frames: number;
  pages: number;
}

export interface FaultFetcherOptions {
  /** A connection of its own (CheckpointStore.duplicate). */
  store: CheckpointStore;
  lists: readonly ListRead[];
  indexes: readonly PageIndex[];
  image: Buffer;
  /** Pages final in the image, shared with the background read. */
  final: Uint8Array;
  /** These pages are final and verified. */
  onReady: (pages: number[]) => void;
  /** A fetch failed or a page failed its check: the VM must not run on. */
  onError: (e: Error) => void;
}

export class FaultFetcher {
  readonly stats: FaultStats = { faults: 0, frames: 0, pages: 0 };
  readonly locator: PageLocator;
  private readonly ramPages: number;
  private readonly fetching = new Map<number, Promise<Decoded>>();
  /** Decoded frames, oldest use first. */
  private readonly cache = new Map<number, Decoded>();
  private cached = 0;
  private inflight = 0;
  private idle?: { promise: Promise<void>; resolve: () => void };
  private failed = false;

  constructor(private readonly o: FaultFetcherOptions) {
    this.ramPages = o.image.length / PAGE;
    this.locator = new PageLocator(o.indexes, this.ramPages);
  }

  /** No more fetches, and nothing more is reported (the recovery is over, its connection closes). */
  stop(): void {
    this.failed = true;
  }

  /** Pages no list holds: zero, final at once (the image is zero there). */
  placeZeroPages(): number[] {
    const zero = this.locator.zeroPages().filter((p) => !this.o.final[p]);
    for (const p of zero) this.o.final[p] = 1;
    return zero;
  }

  /** While fetches for faults are in flight: settles when they are done (the background read waits on it). */
  busy(): Promise<void> | undefined {
    return this.inflight ? this.idle!.promise : undefined;
  }

  /** The guest waits for page p: fetch what it needs, place it and announce it. */
  want(p: number): void {
    if (this.failed || this.o.final[p]) return;
    const refs = this.locator.frames(p);
    if (refs.length === 0) {
      this.o.final[p] = 1;
      this.o.onReady([p]);
      return;
    }
    this.stats.faults++;
    if (this.inflight++ === 0) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      this.idle = { promise, resolve };
    }
    Promise.all(refs.map((r) => this.frame(r)))
      .then((decs) => this.place(p, refs, new Map(decs.map((d, i) => [this.key(refs[i]!), d]))))
      .catch((e: Error) => {
        if (!this.failed) this.o.onError(e);
        this.failed = true;
      })
      .finally(() => {
        if (--this.inflight === 0) this.idle!.resolve();
      });
  }

  private key(r: FrameRef): number {
    return r.list * 2 ** 32 + r.frame;
  }

  /** A frame of the plan, decoded and checked (from the cache, or fetched once however many wait for it). */
  private frame(r: FrameRef): Promise<Decoded> {
    const k = this.key(r);
    const c = this.cache.get(k);
    if (c) {
      this.cache.delete(k); // most recently used last
      this.cache.set(k, c);
      return Promise.resolve(c);
    }
    let f = this.fetching.get(k);
    if (f) return f;
    const l = this.o.lists[r.list]!;
    const where = `${l.where}, chunk ${r.frame}`;
    f = this.o.store.chunkRange(l.list, r.frame, r.frame, l.stripes).then(async ([buf]) => {
      if (!buf) throw new CorruptCheckpointError(`${l.where}: chunk ${r.frame} is not in the store (the list shrank while it was read)`);
      const d = await decodeFrame(buf, { kind: 'pages', bind: { ...l.bind, index: r.frame }, maxRecords: this.ramPages }, where);
      let recs: ReturnType<typeof batchPages>;
      try {
        recs = batchPages(d.raw);
      } catch (e) {
        throw new CorruptCheckpointError(`${where}: ${(e as Error).message}`);
      }
      if (recs.pages.length !== d.count) throw new CorruptCheckpointError(`${where}: ${recs.pages.length} page records, its header says ${d.count}`);
      this.o.indexes[r.list]!.checkFrame(r.frame, recs.pages, recs.kinds);
      const at = new Map<number, number>();
      recs.pages.forEach((p, i) => at.set(p, i));
      const dec: Decoded = { raw: d.raw, offsets: recs.offsets, at };
      this.stats.frames++;
      this.fetching.delete(k);
      this.cache.set(k, dec);
      this.cached += d.raw.length;
      for (const [ck, cv] of this.cache) {
        if (this.cached <= CACHE_BYTES || ck === k) break;
        this.cache.delete(ck);
        this.cached -= cv.raw.length;
      }
      return dec;
    });
    f.catch(() => this.fetching.delete(k));
    this.fetching.set(k, f);
    return f;
  }

  /**
   * Places page p (its frames are decoded) and every page of those frames whose frames are all
   * at hand: records oldest first, a layer at a time (a layer names each page once).
   */
  private place(p: number, refs: FrameRef[], have: Map<number, Decoded>): void {
    if (this.failed) return;
    const todo: { page: number; refs: FrameRef[] }[] = [];
    if (!this.o.final[p]) todo.push({ page: p, refs });
    const seen = new Set<number>([p]);
    for (const r of refs) {
      const ix = this.o.indexes[r.list]!;
      for (let k = ix.start[r.frame]!; k < ix.start[r.frame + 1]!; k++) {
        const q = ix.pages[k]!;
        if (this.o.final[q] || seen.has(q)) continue;
        seen.add(q);
        const qr = this.locator.frames(q);
        if (qr.every((x) => have.has(this.key(x)) || this.cache.has(this.key(x)))) todo.push({ page: q, refs: qr });
      }
    }
    const layers: { rec: Buffer; page: number; ref: FrameRef }[][] = [];
    for (const t of todo) {
      for (let j = t.refs.length - 1, d = 0; j >= 0; j--, d++) {
        const ref = t.refs[j]!;
        const dec = have.get(this.key(ref)) ?? this.cache.get(this.key(ref))!;
        const i = dec.at.get(t.page)!;
        (layers[d] ??= []).push({ rec: dec.raw.subarray(dec.offsets[i]!, dec.offsets[i + 1]!), page: t.page, ref });
      }
    }
    for (const layer of layers) {
      try {
        applyBatch(this.o.image, Buffer.concat(layer.map((x) => x.rec)));
      } catch {
        for (const x of layer) {
          try {
            applyBatch(this.o.image, x.rec);
          } catch (e) {
            const l = this.o.lists[x.ref.list]!;
            throw new CorruptCheckpointError(
              `page ${x.page} (guest address 0x${(x.page * PAGE).toString(16)}) of VM "${this.o.store.vmId}" version ${l.version} (chunk ${x.ref.frame}) fails its check: ${(e as Error).message}`,
            );
          }
        }
      }
    }
    const ready = todo.map((t) => t.page);
    for (const q of ready) this.o.final[q] = 1;
    this.stats.pages += ready.length;
    if (ready.length) this.o.onReady(ready);
  }
}
