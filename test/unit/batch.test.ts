// Batch API: records for the changed pages only, the shadow kept equal to what a receiver
// rebuilds, threads/async/levels giving the same bytes, and applyBatch refusing any corrupt
// batch without touching the image.
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RECORD_HEADER_BYTES, RecordKind } from '../../src/kernel/native.js';
import {
  applyBatch,
  batchBound,
  batchRecords,
  cpuLevels,
  encodeBatch,
  encodeBatchAsync,
  scanDirty,
  summarizeBatch,
} from '../../src/kernel/page-delta.js';
import { crc32c } from '../../src/kernel/codecs.js';
import { mapFile } from '../../src/kernel/map-file.js';
import { corpusDir, loadPairs, rng } from './corpus.js';

const P = 4096;

/** 256 pages: unchanged, zeroed, sparse change, dense change (goes whole). */
function scene(seed = 1): { ram: Buffer; shadow: Buffer; kinds: Map<number, string> } {
  const r = rng(seed);
  const pages = 256;
  const shadow = Buffer.alloc(pages * P);
  for (let i = 0; i < shadow.length; i++) shadow[i] = Math.floor(r() * 256);
  const ram = Buffer.from(shadow);
  const kinds = new Map<number, string>();
  for (let p = 0; p < pages; p++) {
    const base = p * P;
    switch (p % 4) {
      case 0:
        break; // unchanged
      case 1:
        ram.fill(0, base, base + P);
        kinds.set(p, 'zero');
        break;
      case 2:
        for (let k = 0; k < 10; k++) ram[base + Math.floor(r() * P)] ^= 0x5a;
        kinds.set(p, 'delta');
        break;
      default:
        for (let k = 0; k < P; k++) ram[base + k] = Math.floor(r() * 256);
        kinds.set(p, 'full');
    }
  }
  return { ram, shadow, kinds };
}

t.test('records for changed pages; shadow updated; apply rebuilds ram', async (t) => {
  const { ram, shadow, kinds } = scene();
  const old = Buffer.from(shadow);
  const rec = encodeBatch(ram, shadow, null);
  const s = summarizeBatch(rec);
  t.equal(s.records, kinds.size, 'one record per changed page');
  t.equal(s.zero, 64);
  t.equal(s.delta, 64);
  t.equal(s.full, 64);
  for (const r of batchRecords(rec)) {
    const want = kinds.get(r.page);
    t.equal(['zero', 'delta', 'full'][r.kind], want, `page ${r.page}`);
    t.equal(r.crc32c, crc32c(ram.subarray(r.page * P, (r.page + 1) * P)), `crc of page ${r.page}`);
    if (t.passing() === false) break;
  }
  t.ok(shadow.equals(ram), 'shadow equals ram after the batch');
  const image = Buffer.from(old);
  t.equal(applyBatch(image, rec).records, kinds.size);
  t.ok(image.equals(ram), 'applying the records to the old image gives ram');
  t.equal(encodeBatch(ram, shadow, null).length, 0, 'nothing left to send');
});

t.test('corpus: shadow tracks ram at every level, batches apply', { skip: !corpusDir() && 'no corpus' }, async (t) => {
  for (const f of ['idle', 'wset', 'kv', 'qsort']) {
    const pairs = loadPairs(f);
    const n = pairs.length / 8192;
    const ram = Buffer.alloc(n * P);
    const old = Buffer.alloc(n * P);
    for (let i = 0; i < n; i++) {
      pairs.copy(old, i * P, i * 8192, i * 8192 + P);
      pairs.copy(ram, i * P, i * 8192 + P, i * 8192 + 2 * P);
    }
    let ref: Buffer | undefined;
    for (const level of cpuLevels()) {
      for (const dense of [false, true]) {
        const shadow = Buffer.from(old);
        const rec = encodeBatch(ram, shadow, null, { level, dense, threads: 2 });
        t.ok(shadow.equals(ram), `${f} ${level} dense=${dense}: shadow equals ram`);
        const image = Buffer.from(old);
        t.equal(applyBatch(image, rec).records, n, `${f} ${level} dense=${dense}: every page applied`);
        t.ok(image.equals(ram), `${f} ${level} dense=${dense}: image equals ram`);
        if (!dense) {
          if (ref) t.ok(rec.equals(ref), `${f} ${level}: same bytes as ${cpuLevels()[0]}`);
          else ref = rec;
        }
      }
    }
  }
});

t.test('page list, duplicates and range', async (t) => {
  const { ram, shadow } = scene(2);
  const rec = encodeBatch(ram, Buffer.from(shadow), Uint32Array.from([2, 3, 4, 6]));
  t.same([...batchRecords(rec)].map((r) => r.page), [2, 3, 6], 'unchanged page 4 gives no record');
  const dup = encodeBatch(ram, Buffer.from(shadow), Uint32Array.from([2, 3, 2, 6, 3]), { threads: 2 });
  t.same([...batchRecords(dup)].map((r) => r.page), [2, 3, 6], 'a repeated index gives one record');
  t.equal(encodeBatch(ram, Buffer.from(shadow), new Uint32Array(0)).length, 0, 'an empty list is no pages, not every page');
  t.equal((await encodeBatchAsync(ram, Buffer.from(shadow), new Uint32Array(0))).length, 0, 'likewise off the event loop');
  t.throws(() => encodeBatch(ram, shadow, Uint32Array.from([256])), /out of range/);
  t.throws(() => encodeBatch(ram, shadow.subarray(0, P), null), /differ in size/);
  t.throws(() => encodeBatch(ram, shadow, null, { threads: 0 }), /threads/);
});

t.test('levels, threads and async give the same bytes', async (t) => {
  const { ram, shadow } = scene(3);
  const ref = encodeBatch(ram, shadow, null, { updateShadow: false, level: 'scalar' });
  t.ok(ref.length > 0);
  for (const level of cpuLevels()) {
    for (const threads of [1, 2, 3]) {
      const b = encodeBatch(ram, shadow, null, { updateShadow: false, level, threads });
      t.ok(b.equals(ref), `${level}, ${threads} threads`);
    }
  }
  const a = await encodeBatchAsync(ram, shadow, null, { updateShadow: false, threads: 2 });
  t.ok(a.equals(ref), 'async');
  const copy = Buffer.from(shadow);
  const b = encodeBatch(ram, copy, null, { updateShadow: false });
  t.ok(copy.equals(shadow) && b.equals(ref), 'updateShadow: false leaves the shadow alone');
});

t.test('threads on a batch of megabytes (chunks claimed by several threads, appended in list order) give the same bytes and shadow', async (t) => {
  // 1536 pages: a third unchanged, a third with a few changed bytes, a third rewritten (whole pages),
  // so each thread's part is megabytes and parts mix record kinds at their edges.
  const pages = 1536;
  const r = rng(77);
  const shadow = Buffer.alloc(pages * P);
  for (let i = 0; i < shadow.length; i++) shadow[i] = (r() * 256) | 0;
  const ram = Buffer.from(shadow);
  for (let p = 0; p < pages; p++) {
    if (p % 3 === 1) for (let k = 0; k < 8; k++) ram[p * P + ((r() * P) | 0)] ^= 0x5a;
    if (p % 3 === 2) for (let k = 0; k < P; k++) ram[p * P + k] = (r() * 256) | 0;
  }
  const s1 = Buffer.from(shadow);
  const ref = encodeBatch(ram, s1, null, { threads: 1 });
  t.ok(ref.length > 2 * 1024 * 1024, `reference batch is ${ref.length} bytes`);
  t.ok(s1.equals(ram), 'the shadow is brought up to date');
  for (const threads of [2, 3, 8]) {
    const s = Buffer.from(shadow);
    const b = encodeBatch(ram, s, null, { threads });
    t.ok(b.equals(ref), `${threads} threads: same records in the same order`);
    t.ok(s.equals(ram), `${threads} threads: same shadow`);
  }
  // A page list out of order: records follow the list, whichever thread claimed their chunk.
  const list = Uint32Array.from({ length: pages }, (_, i) => i);
  for (let i = pages - 1; i > 0; i--) {
    const j = (r() * (i + 1)) | 0;
    [list[i], list[j]] = [list[j]!, list[i]!];
  }
  const refList = encodeBatch(ram, Buffer.from(shadow), list, { threads: 1 });
  t.same(
    [...batchRecords(refList)].map((x) => x.page),
    Array.from(list).filter((p) => p % 3 !== 0),
    'one thread: records in list order (unchanged pages have none)',
  );
  for (const threads of [2, 3, 8]) {
    const s = Buffer.from(shadow);
    t.ok(encodeBatch(ram, s, list, { threads }).equals(refList), `${threads} threads, shuffled list: same bytes`);
    t.ok(s.equals(ram), `${threads} threads, shuffled list: same shadow`);
  }
});

t.test('a batch of ten megabytes (output grown through several mapped blocks) applies exactly', async (t) => {
  // Outputs past a megabyte live in their own mappings that grow by mremap: every byte written
  // before a move must survive it, for a synchronous and an asynchronous batch alike.
  const pages = 2600;
  const r = rng(91);
  const shadow = Buffer.alloc(pages * P);
  const ram = Buffer.alloc(pages * P);
  for (let i = 0; i < ram.length; i++) ram[i] = (r() * 256) | 0;
  const sync = encodeBatch(ram, Buffer.from(shadow), null);
  t.ok(sync.length > 10 * 1024 * 1024, `batch is ${sync.length} bytes`);
  t.equal(summarizeBatch(sync).full, pages, 'every page whole');
  const async = await encodeBatchAsync(ram, Buffer.from(shadow), null);
  t.ok(async.equals(sync), 'async gives the same bytes');
  const image = Buffer.from(shadow);
  t.equal(applyBatch(image, sync).records, pages);
  t.ok(image.equals(ram), 'applying it rebuilds ram');
});

t.test('applyBatch refuses corrupt batches and leaves the image untouched', async (t) => {
  const { ram, shadow } = scene(4);
  const old = Buffer.from(shadow);
  const rec = encodeBatch(ram, shadow, null);
  const recs = [...batchRecords(rec)];
  const deltaRec = recs.find((r) => r.kind === RecordKind.Delta)!;
  const deltaOff = deltaRec.payload.byteOffset - rec.byteOffset - RECORD_HEADER_BYTES;

  const cases: [string, (b: Buffer) => Buffer, RegExp][] = [
    ['flipped payload byte', (b) => (b[b.length - 1] ^= 1, b), /checksum|bad delta/],
    ['truncated', (b) => b.subarray(0, b.length - 1), /truncated/],
    ['bad kind', (b) => ((b[4] = 9), b), /unknown record kind/],
    ['reserved byte', (b) => ((b[5] = 1), b), /reserved/],
    ['page out of range', (b) => (b.writeUInt32LE(100000, 0), b), /outside the image/],
    ['wrong length for kind', (b) => (b.writeUInt32LE(4096, deltaOff + 8), b), /applyBatch: record \d+/],
    ['duplicate page', (b) => Buffer.concat([b, b.subarray(0, RECORD_HEADER_BYTES + b.readUInt32LE(8))]), /appears twice/],
    ['delta corrupted inside', (b) => ((b[deltaOff + RECORD_HEADER_BYTES] = 0xff), (b[deltaOff + RECORD_HEADER_BYTES + 1] = 0xff), b), /bad delta|checksum/],
  ];
  for (const [why, mutate, re] of cases) {
    const image = Buffer.from(old);
    t.throws(() => applyBatch(image, mutate(Buffer.from(rec))), re, why);
    t.ok(image.equals(old), `${why}: image untouched`);
  }
  const image = Buffer.from(old);
  applyBatch(image, rec);
  t.ok(image.equals(ram), 'the intact batch applies');
});

t.test('dense option on the corpus: packed words where they beat the delta', { skip: !corpusDir() && 'no corpus' }, async (t) => {
  const pairs = loadPairs('qsort');
  const n = pairs.length / 8192;
  const ram = Buffer.alloc(n * P);
  const shadow = Buffer.alloc(n * P);
  for (let i = 0; i < n; i++) {
    pairs.copy(shadow, i * P, i * 8192, i * 8192 + P);
    pairs.copy(ram, i * P, i * 8192 + P, i * 8192 + 2 * P);
  }
  const plain = encodeBatch(ram, shadow, null, { updateShadow: false });
  const dense = encodeBatch(ram, shadow, null, { updateShadow: false, dense: true });
  const s = summarizeBatch(dense);
  t.ok(s.words > n / 2, `${s.words} of ${n} pages as packed words`);
  t.ok(dense.length < 0.8 * plain.length, `dense ${dense.length} < 0.8 x plain ${plain.length}`);
  const image = Buffer.from(shadow);
  applyBatch(image, dense);
  t.ok(image.equals(ram), 'dense batch applies');
});

t.test('encodeBatch into a reused out buffer: a view of it, same bytes; too small falls back, nothing lost', async (t) => {
  const { ram, shadow } = scene(11);
  const pages = ram.length / P;
  t.equal(batchBound(pages), pages * (RECORD_HEADER_BYTES + P) + RECORD_HEADER_BYTES + 2 * P + 64);
  const want = encodeBatch(ram, Buffer.from(shadow), null);
  for (const threads of [1, 2]) {
    const out = Buffer.alloc(batchBound(pages));
    for (let round = 0; round < 2; round++) {
      const sh = Buffer.from(shadow);
      const got = encodeBatch(ram, sh, null, { out, threads });
      t.equal(got.buffer, out.buffer, `threads ${threads}, round ${round}: the result is a view of out`);
      t.equal(got.byteOffset, out.byteOffset);
      t.ok(got.equals(want), `threads ${threads}, round ${round}: same records`);
      t.ok(sh.equals(ram), 'shadow updated');
    }
  }
  // A page list: the bound is for its length.
  const list = Uint32Array.from({ length: 40 }, (_, i) => i * 3);
  const small = Buffer.alloc(batchBound(list.length));
  const viaList = encodeBatch(ram, Buffer.from(shadow), list, { out: small });
  t.equal(viaList.buffer, small.buffer, 'a list of 40 pages fits batchBound(40)');
  t.ok(viaList.equals(encodeBatch(ram, Buffer.from(shadow), list)), 'same records for the list');
  // Too small: encoded into a new buffer instead, the shadow updated exactly once.
  const tiny = Buffer.alloc(batchBound(pages) - 1);
  const sh = Buffer.from(shadow);
  const fell = encodeBatch(ram, sh, null, { out: tiny });
  t.not(fell.buffer, tiny.buffer, 'a new buffer when out is too small');
  t.ok(fell.equals(want), 'with the same records');
  t.ok(tiny.equals(Buffer.alloc(tiny.length)), 'out was not written');
  const image = Buffer.from(shadow);
  applyBatch(image, fell);
  t.ok(image.equals(ram) && sh.equals(ram), 'nothing lost: records and shadow agree');
  t.throws(() => encodeBatch(ram, Buffer.from(shadow), null, { out: ram }), /out overlaps ram or shadow/);
});

t.test('batchRecords and summarizeBatch read the same framing and refuse the same bad framing', async (t) => {
  const { ram, shadow } = scene(4);
  const rec = encodeBatch(ram, Buffer.from(shadow), null);
  const s = summarizeBatch(rec);
  const walked = [...batchRecords(rec)];
  t.equal(s.records, walked.length);
  t.equal(s.payloadBytes, walked.reduce((a, r) => a + r.length, 0));
  t.same([s.zero, s.delta, s.full], [0, 1, 2].map((k) => walked.filter((r) => r.kind === k).length));
  // A Uint8Array view at an offset reads like the Buffer.
  const copy = new Uint8Array(rec.length + 8);
  copy.set(rec, 8);
  t.same(summarizeBatch(copy.subarray(8)), s, 'a view at an offset');
  const bad: [string, Buffer, RegExp][] = [
    ['truncated header', rec.subarray(0, rec.length - walked.at(-1)!.length - 3), /truncated header/],
    ['unknown kind', Buffer.concat([Buffer.from([0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])]), /unknown kind 9/],
    ['payload truncated', rec.subarray(0, rec.length - 1), /payload truncated/],
  ];
  for (const [why, b, re] of bad) {
    t.throws(() => summarizeBatch(b), re, `summarizeBatch: ${why}`);
    t.throws(() => [...batchRecords(b)], re, `batchRecords: ${why}`);
  }
});

t.test('scanDirty', async (t) => {
  const { ram, shadow, kinds } = scene(5);
  for (const level of cpuLevels()) t.same([...scanDirty(ram, shadow, level)], [...kinds.keys()].sort((a, b) => a - b), level);
});

t.test('mapFile aliases a shared file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-map-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'ram');
  writeFileSync(path, Buffer.alloc(2 * P));
  const rw = mapFile(path, 2 * P, { writable: true });
  t.equal(rw.length, 2 * P);
  rw.write('hello', 4096);
  t.equal(readFileSync(path).toString('latin1', 4096, 4101), 'hello', 'writes reach the file');
  const ro = mapFile(path, 2 * P);
  writeFileSync(path, Buffer.from('HELLO'), { flag: 'r+' });
  t.equal(ro.toString('latin1', 0, 5), 'HELLO', 'the mapping sees writes to the file');
  t.throws(() => mapFile(path, 3 * P), /smaller than/);
  t.throws(() => mapFile(join(dir, 'missing'), P), /open/);
});
