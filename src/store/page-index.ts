// A page index: for each frame of one chunk list (a version's, or the base image's), which pages
// its records hold, in record order, and whether each record decides its page alone (zero, a
// whole page) or applies to the page's older contents (a delta). Lazy recovery uses it to serve
// a page the guest faults on by fetching only the frames that hold that page's newest records,
// instead of waiting until the read reaches them (src/store/lazy-fetch.ts).
//
// Where it is to live, and why (the writer, commit script and reader that do this are not in
// this commit yet: this file is the format only): written by the writer of the list, next to the list
// (migsafe:{id}:v:{n}:index, migsafe:{id}:base:index), and committed by the same script that
// makes the version (or the base) visible. The alternative — building it from the frames as
// they are read — gives nothing to the first fault: the pages a frame holds are inside its
// compressed payload, so knowing them means reading and decompressing the frame, which is the
// very wait the index removes. Written at commit, it costs the writer one walk over record
// headers it already walked to count them (batchPages instead of summarizeBatch) and a few
// bytes per run of pages (a full 1 GiB version with scattered zero pages: tens of KiB), and
// the reader one GET per list before QEMU has even started. The key is in the VM's hash slot
// also on a cluster (only frames are striped): the commit script checks it like the device state.
//
// Wire: msgpack {f: format, m: vm, v: version, l: 'version' | 'base', n: frames, p: records,
// x: CRC32C of the binding and the body, d: body}. Body, per frame: ULEB128 record count,
// ULEB128 run count, then per run (consecutive pages, same decides-alone bit, in record order):
// zigzag ULEB128 of (first page − end of the previous run in the frame), ULEB128 of
// (length × 2 + decides-alone). Like a frame it is bound to its VM, version and list, and is
// refused whole when anything does not add up — never used in part. It is not a MAC: a writer
// of the store can forge it (as it can a frame); the reader checks every frame it reads
// against it all the same, and stops the VM on a frame the index misdescribes.
import { pack, unpack } from 'msgpackr';
import { crc32c, RecordKind } from '../kernel/index.js';
import { CorruptCheckpointError } from './frame.js';

export const INDEX_FORMAT = 1;

/** Where an index belongs: the list it describes, and how many frames that list has. */
export interface IndexBinding {
  vm: string;
  /** The version (for the base image: the version the base holds). */
  version: number;
  list: 'version' | 'base';
  frames: number;
}

/** The record kinds that decide a page without its older contents. */
export const decidesAlone = (k: number) => k === RecordKind.Zero || k === RecordKind.Full || k === RecordKind.PlanesLz4;

interface IndexWire {
  f: number;
  m: string;
  v: number;
  l: IndexBinding['list'];
  n: number;
  p: number;
  x: number;
  d: Uint8Array;
}

function checksum(b: IndexBinding, records: number, body: Uint8Array): number {
  return crc32c(body, crc32c(Buffer.from(`migsafe-index|${INDEX_FORMAT}|${b.vm}|${b.version}|${b.list}|${b.frames}|${records}|`))) >>> 0;
}

/** A growing byte buffer of ULEB128 numbers. */
class Bytes {
  buf = new Uint8Array(256);
  len = 0;
  uleb(v: number): void {
    if (this.len + 10 > this.buf.length) {
      const b = new Uint8Array(this.buf.length * 2);
      b.set(this.buf.subarray(0, this.len));
      this.buf = b;
    }
    while (v >= 0x80) {
      this.buf[this.len++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.len++] = v;
  }
}

/** Collects the index of a list as its frames are written, one addFrame per frame, in order. */
export class PageIndexBuilder {
  private readonly body = new Bytes();
  private frames = 0;
  private records = 0;
  private valid = true;

  /** Indexes the next frame's records (batchPages of them). */
  addFrame({ pages, kinds }: { pages: Uint32Array; kinds: Uint8Array }): void {
    this.frames++;
    this.records += pages.length;
    let runs = 0;
    for (let i = 0; i < pages.length; runs++) i = runEnd(pages, kinds, i);
    this.body.uleb(pages.length);
    this.body.uleb(runs);
    let prevEnd = 0;
    for (let i = 0; i < pages.length; ) {
      const end = runEnd(pages, kinds, i);
      const d = pages[i]! - prevEnd;
      this.body.uleb(d >= 0 ? d * 2 : -d * 2 - 1);
      this.body.uleb((end - i) * 2 + (decidesAlone(kinds[i]!) ? 1 : 0));
      prevEnd = pages[end - 1]! + 1;
      i = end;
    }
  }

  /** A frame went in without its records to look at (a pre-framed chunk): the list gets no index. */
  invalidate(): void {
    this.valid = false;
  }

  /** The encoded index, bound to its list; undefined when a frame went in unindexed. */
  encode(b: Omit<IndexBinding, 'frames'>): Buffer | undefined {
    if (!this.valid) return undefined;
    const body = this.body.buf.subarray(0, this.body.len);
    const bind = { ...b, frames: this.frames };
    const wire: IndexWire = { f: INDEX_FORMAT, m: b.vm, v: b.version, l: b.list, n: this.frames, p: this.records, x: checksum(bind, this.records, body), d: body };
    return pack(wire);
  }
}

/** The end (exclusive) of the run of consecutive pages with one decides-alone bit starting at i. */
function runEnd(pages: Uint32Array, kinds: Uint8Array, i: number): number {
  const alone = decidesAlone(kinds[i]!);
  let j = i + 1;
  while (j < pages.length && pages[j] === pages[j - 1]! + 1 && decidesAlone(kinds[j]!) === alone) j++;
  return j;
}

/** What the reader expects of an index: its list, its exact size and the VM's page count. */
export interface IndexExpectation {
  bind: IndexBinding;
  /** Bytes the list's metadata records (indexBytes, baseIndexBytes). */
  bytes: number;
  ramPages: number;
  /** Records the list holds in all, when its metadata says (a version's pages). */
  records?: number;
}

/** A decoded index: frame f's records are entries start[f] .. start[f + 1] − 1. */
export class PageIndex {
  constructor(
    readonly where: string,
    readonly start: Uint32Array,
    readonly pages: Uint32Array,
    /** 1 where the record decides its page alone. */
    readonly alone: Uint8Array,
  ) {}

  get frames(): number {
    return this.start.length - 1;
  }

  /**
   * Throws unless frame f holds exactly the records the index says, in its order: a frame
   * that was read is checked against the index before any of its pages is used.
   */
  checkFrame(f: number, pages: Uint32Array, kinds: Uint8Array): void {
    const s = this.start[f]!;
    const n = this.start[f + 1]! - s;
    let bad = pages.length !== n ? `${pages.length} records, the page index says ${n}` : undefined;
    for (let i = 0; !bad && i < n; i++) {
      if (pages[i] !== this.pages[s + i] || (decidesAlone(kinds[i]!) ? 1 : 0) !== this.alone[s + i]) {
        bad = `record ${i} is page ${pages[i]} (kind ${kinds[i]}), the page index says page ${this.pages[s + i]}${this.alone[s + i] ? ' whole' : ' as a delta'}`;
      }
    }
    if (bad) throw new CorruptCheckpointError(`${this.where}, chunk ${f}: its records are not what the page index says (${bad}): the index or the frame was rewritten`);
  }
}

/** Reads one ULEB128 number at `at.i` of `d`, within 2^53; throws on a truncated or oversized one. */
function readUleb(d: Uint8Array, at: { i: number }): number {
  let v = 0;
  let scale = 1;
  for (;;) {
    if (at.i >= d.length) throw new RangeError('truncated body');
    const b = d[at.i++]!;
    v += (b & 0x7f) * scale;
    if (v > Number.MAX_SAFE_INTEGER) throw new RangeError('a number out of range');
    if (b < 0x80) return v;
    scale *= 0x80;
  }
}

/**
 * Unwraps and checks an index; `where` names its list in errors. Throws CorruptCheckpointError
 * on anything that does not add up — nothing of a refused index is used.
 */
export function decodePageIndex(buf: Uint8Array, want: IndexExpectation, where: string): PageIndex {
  const fail = (why: string): never => {
    throw new CorruptCheckpointError(`${where}: page index refused: ${why}`);
  };
  if (buf.length !== want.bytes) fail(`${buf.length} bytes, the metadata says ${want.bytes} (truncated or replaced)`);
  let wire: IndexWire;
  try {
    wire = unpack(buf) as IndexWire;
  } catch (e) {
    return fail(`not a page index (${(e as Error).message})`);
  }
  if (typeof wire !== 'object' || wire === null || typeof wire.f !== 'number') return fail('not a page index');
  if (wire.f !== INDEX_FORMAT) fail(`format ${wire.f}, this migsafe reads format ${INDEX_FORMAT}`);
  const b = want.bind;
  if (wire.m !== b.vm || wire.v !== b.version || wire.l !== b.list) {
    fail(`foreign: it belongs to VM "${String(wire.m)}" version ${String(wire.v)} ${String(wire.l)}, not to VM "${b.vm}" version ${b.version} ${b.list} (copied from elsewhere in the store)`);
  }
  if (wire.n !== b.frames) fail(`it describes ${String(wire.n)} frames, the list has ${b.frames}`);
  const cap = (b.list === 'base' ? 1 : 2) * want.ramPages;
  if (!Number.isSafeInteger(wire.p) || wire.p < 0 || wire.p > cap) fail(`${String(wire.p)} records, more than the list can hold (${cap})`);
  if (want.records !== undefined && wire.p !== want.records) fail(`${wire.p} records, the metadata says ${want.records}`);
  if (!(wire.d instanceof Uint8Array)) return fail('malformed header');
  if (checksum(b, wire.p, wire.d) !== wire.x >>> 0) fail('checksum mismatch');
  const start = new Uint32Array(b.frames + 1);
  const pages = new Uint32Array(wire.p);
  const alone = new Uint8Array(wire.p);
  const d = wire.d;
  const at = { i: 0 };
  // The frame each page was last seen in (+1): a page twice in one frame is refused, as the
  // locator and the fault path take a frame to hold a page at most once.
  const seenIn = new Uint32Array(want.ramPages);
  let k = 0;
  try {
    for (let f = 0; f < b.frames; f++) {
      start[f] = k;
      const count = readUleb(d, at);
      const runs = readUleb(d, at);
      if (count > want.ramPages || k + count > wire.p) throw new RangeError(`frame ${f}: ${count} records, more than the index holds`);
      if (runs > count) throw new RangeError(`frame ${f}: ${runs} runs of ${count} records`);
      const end = k + count;
      let prevEnd = 0;
      for (let r = 0; r < runs; r++) {
        const z = readUleb(d, at);
        const first = prevEnd + (z % 2 ? -(z + 1) / 2 : z / 2);
        const lw = readUleb(d, at);
        const len = Math.floor(lw / 2);
        if (len < 1 || first < 0 || first + len > want.ramPages) throw new RangeError(`frame ${f}: a run of pages ${first}..${first + len - 1}, beyond the ${want.ramPages} pages of RAM`);
        if (k + len > end) throw new RangeError(`frame ${f}: its runs hold more than its ${count} records`);
        for (let j = 0; j < len; j++) {
          if (seenIn[first + j] === f + 1) throw new RangeError(`frame ${f}: page ${first + j} twice`);
          seenIn[first + j] = f + 1;
          pages[k] = first + j;
          alone[k++] = lw % 2;
        }
        prevEnd = first + len;
      }
      if (k !== end) throw new RangeError(`frame ${f}: its runs hold ${count - (end - k)} of its ${count} records`);
    }
  } catch (e) {
    return fail((e as Error).message);
  }
  start[b.frames] = k;
  if (k !== wire.p) fail(`its frames hold ${k} records, its header says ${wire.p}`);
  if (at.i !== d.length) fail(`${d.length - at.i} bytes after the last frame`);
  return new PageIndex(where, start, pages, alone);
}
