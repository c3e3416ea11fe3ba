// Page deltas and batches: typed wrappers over the addon (src/kernel/native.ts), plus a
// reader of the record format for code that inspects batches.
import {
  native,
  PAGE_SIZE,
  RECORD_HEADER_BYTES,
  RecordKind,
  type ApplyResult,
  type CpuLevel,
  type EncodeBatchOptions,
} from './native.js';

/** SIMD level the kernel uses by default (best this CPU supports). */
export function cpuLevel(): CpuLevel {
  return native().cpuLevel();
}

/** Every level this CPU can run, best first. */
export function cpuLevels(): CpuLevel[] {
  return native().levels();
}

function checkPage(p: Uint8Array, name: string): void {
  if (!(p instanceof Uint8Array) || p.length !== PAGE_SIZE) {
    throw new RangeError(`${name} must be a 4096-byte Uint8Array`);
  }
}

/**
 * XBZRLE delta (QEMU's format) turning oldPage into newPage. Empty Buffer when the pages are
 * equal; null when the delta would overflow a page (QEMU's rule): send the page whole.
 */
export function encodePage(oldPage: Uint8Array, newPage: Uint8Array, level?: CpuLevel): Buffer | null {
  checkPage(oldPage, 'oldPage');
  checkPage(newPage, 'newPage');
  return native().encodePage(oldPage, newPage, level);
}

/** newPage rebuilt from oldPage and an XBZRLE delta. Throws on a malformed delta. */
export function decodePage(oldPage: Uint8Array, delta: Uint8Array): Buffer {
  checkPage(oldPage, 'oldPage');
  return native().decodePage(oldPage, delta);
}

export interface EncodeBatchSyncOptions extends EncodeBatchOptions {
  /**
   * Memory to encode into, reused from call to call: no allocation and no copy. The result is
   * then a view of `out`, valid until `out` is written again. Used when it holds at least
   * batchBound(candidate pages) bytes (`pages.length`, or every page of `ram`); otherwise the
   * result is a new Buffer, as without `out`. Must not overlap `ram` or `shadow`.
   */
  out?: Uint8Array;
}

/**
 * Encodes the pages of ram that differ from shadow into one buffer of records (format in
 * docs/kernel.md) and, unless told otherwise, brings shadow up to date. pages = null: all.
 */
export function encodeBatch(
  ram: Uint8Array,
  shadow: Uint8Array,
  pages: Uint32Array | null,
  opts?: EncodeBatchSyncOptions,
): Buffer {
  if (opts?.out) {
    const n = native().encodeBatchInto(ram, shadow, pages, opts, opts.out);
    if (n >= 0) return Buffer.from(opts.out.buffer, opts.out.byteOffset, n);
  }
  return native().encodeBatch(ram, shadow, pages, opts);
}

/** Bytes an `out` buffer for encodeBatch needs for this many candidate pages (every page whole, plus scratch room). */
export function batchBound(pages: number): number {
  return native().batchBound(pages);
}

/** encodeBatch on worker threads; ram and shadow must stay untouched until it settles. */
export function encodeBatchAsync(
  ram: Uint8Array,
  shadow: Uint8Array,
  pages: Uint32Array | null,
  opts?: EncodeBatchOptions,
): Promise<Buffer> {
  return native().encodeBatchAsync(ram, shadow, pages, opts);
}

/** Applies a record buffer to an image: all records are checked first; on error nothing is written. */
export function applyBatch(image: Uint8Array, records: Uint8Array): ApplyResult {
  return native().applyBatch(image, records);
}

/** Indexes of the pages where ram and shadow differ. */
export function scanDirty(ram: Uint8Array, shadow: Uint8Array, level?: CpuLevel): Uint32Array {
  return native().scanDirty(ram, shadow, level);
}

/** One record of a batch buffer; payload aliases the buffer. */
export interface BatchRecord {
  page: number;
  kind: RecordKind;
  length: number;
  crc32c: number;
  payload: Buffer;
}

type RecordHeader = Omit<BatchRecord, 'payload'> & { start: number };

/**
 * Reads the header of the record at byte `off` into h (reused by callers that walk many
 * records), framing checked; its payload is bytes [h.start, h.start + h.length).
 */
function readRecordHeader(v: DataView, off: number, h: RecordHeader): void {
  const n = v.byteLength;
  if (n - off < RECORD_HEADER_BYTES) throw new RangeError(`batch: truncated header at byte ${off}`);
  const kind = v.getUint8(off + 4) as RecordKind;
  const length = v.getUint32(off + 8, true);
  if (kind > RecordKind.Words) throw new RangeError(`batch: unknown kind ${kind} at byte ${off}`);
  const start = off + RECORD_HEADER_BYTES;
  if (start + length > n) throw new RangeError(`batch: payload truncated at byte ${off}`);
  h.page = v.getUint32(off, true);
  h.kind = kind;
  h.length = length;
  h.crc32c = v.getUint32(off + 12, true);
  h.start = start;
}

const newHeader = (): RecordHeader => ({ page: 0, kind: RecordKind.Zero, length: 0, crc32c: 0, start: 0 });
const viewOf = (buf: Uint8Array) => new DataView(buf.buffer, buf.byteOffset, buf.byteLength);

/**
 * Walks the records of a batch buffer, checking only their framing (applyBatch does the full
 * validation). Throws on a truncated or inconsistent header.
 */
export function* batchRecords(buf: Uint8Array): Generator<BatchRecord> {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const v = viewOf(buf);
  const h = newHeader();
  for (let off = 0; off < b.length; off = h.start + h.length) {
    readRecordHeader(v, off, h);
    yield { page: h.page, kind: h.kind, length: h.length, crc32c: h.crc32c, payload: b.subarray(h.start, h.start + h.length) };
  }
}

export interface BatchSummary {
  records: number;
  zero: number;
  delta: number;
  full: number;
  planes: number;
  words: number;
  payloadBytes: number;
}

/**
 * Counts of a batch buffer by kind, framing checked as batchRecords checks it. (No payload
 * views: the checkpoint engine counts every batch it stores.)
 */
export function summarizeBatch(buf: Uint8Array): BatchSummary {
  const s: BatchSummary = { records: 0, zero: 0, delta: 0, full: 0, planes: 0, words: 0, payloadBytes: 0 };
  const v = viewOf(buf);
  const r = newHeader();
  for (let off = 0; off < v.byteLength; off = r.start + r.length) {
    readRecordHeader(v, off, r);
    s.records++;
    s.payloadBytes += r.length;
    if (r.kind === RecordKind.Zero) s.zero++;
    else if (r.kind === RecordKind.Delta) s.delta++;
    else if (r.kind === RecordKind.Full) s.full++;
    else if (r.kind === RecordKind.PlanesLz4) s.planes++;
    else s.words++;
  }
  return s;
}

/**
 * The page, kind and byte offset of every record of a batch buffer, in order (framing checked as
 * batchRecords checks it); record i is bytes offsets[i] .. offsets[i + 1] − 1. What a page index
 * (src/store/page-index.ts) records of a frame, and where a reader finds one page's record.
 */
export function batchPages(buf: Uint8Array): { pages: Uint32Array; kinds: Uint8Array; offsets: Uint32Array } {
  const v = viewOf(buf);
  const r = newHeader();
  let pages = new Uint32Array(64);
  let kinds = new Uint8Array(64);
  let offsets = new Uint32Array(65);
  let n = 0;
  for (let off = 0; off < v.byteLength; off = r.start + r.length) {
    readRecordHeader(v, off, r);
    if (n === pages.length) {
      const p = new Uint32Array(n * 2);
      p.set(pages);
      const k = new Uint8Array(n * 2);
      k.set(kinds);
      const o = new Uint32Array(n * 2 + 1);
      o.set(offsets);
      pages = p;
      kinds = k;
      offsets = o;
    }
    offsets[n] = off;
    pages[n] = r.page;
    kinds[n++] = r.kind;
  }
  offsets[n] = v.byteLength;
  return { pages: pages.subarray(0, n), kinds: kinds.subarray(0, n), offsets: offsets.subarray(0, n + 1) };
}

/**
 * Cuts a batch buffer at record boundaries into pieces of about `limit` bytes: each piece ends
 * at the first boundary at or after `limit` bytes (so a piece exceeds it by less than one
 * record; a record larger than `limit` is a piece of its own). Framing is checked. The pieces
 * alias `buf`.
 */
export function splitBatch(buf: Uint8Array, limit: number): Buffer[] {
  if (!(limit > 0)) throw new RangeError(`splitBatch: limit must be > 0 (got ${limit})`);
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const v = viewOf(buf);
  const h = newHeader();
  const out: Buffer[] = [];
  let at = 0;
  for (let off = 0; off < b.length; ) {
    readRecordHeader(v, off, h);
    off = h.start + h.length;
    if (off - at >= limit || off === b.length) {
      out.push(b.subarray(at, off));
      at = off;
    }
  }
  return out;
}
