// Packed words (batch record kind 4, addon/src/words.cc): dense pages as the 32-bit words that
// changed, bit-packed from each group's minimum. Checked against a reference decoder written
// here from the format description alone, at every width from 0 to 32, at every CPU level, and
// for corrupt payloads, which must be refused with the image untouched.
import t from 'tap';
import { RECORD_HEADER_BYTES, RecordKind } from '../../src/kernel/native.js';
import { applyBatch, batchRecords, cpuLevels, encodeBatch, summarizeBatch } from '../../src/kernel/page-delta.js';
import { compress, crc32c } from '../../src/kernel/codecs.js';
import { rng } from './corpus.js';

const P = 4096;

/** Reference decoder: bitmap of replaced words, then groups of 64 (u32 base, u8 width, bits). */
function refDecodeWords(payload: Buffer, old: Buffer): Buffer {
  const page = Buffer.from(old);
  const words: number[] = [];
  for (let w = 0; w < 1024; w++) if ((payload[w >> 3]! >> (w & 7)) & 1) words.push(w);
  if (words.length === 0) throw new Error('no word replaced');
  let pos = 128;
  for (let g = 0; g < words.length; g += 64) {
    const m = Math.min(64, words.length - g);
    const base = payload.readUInt32LE(pos);
    const width = payload[pos + 4]!;
    if (width > 32) throw new Error('width');
    pos += 5;
    let bit = pos * 8;
    for (let i = 0; i < m; i++) {
      let x = 0n;
      for (let b = 0; b < width; b++, bit++) if ((payload[bit >> 3]! >> (bit & 7)) & 1) x |= 1n << BigInt(b);
      page.writeUInt32LE(Number((BigInt(base) + x) & 0xffffffffn), 4 * words[g + i]!);
    }
    pos += Math.ceil((width * m) / 8);
  }
  if (pos !== payload.length) throw new Error(`trailing bytes: ${pos} of ${payload.length}`);
  return page;
}

/**
 * One page per width 0..32: `count` words replaced (spread over the page) by values base + x,
 * x < 2^width, with both ends of the range present in every group of 64.
 */
function widthScene(count: number, seed = 7): { ram: Buffer; shadow: Buffer } {
  const r = rng(seed);
  const pages = 33;
  const shadow = Buffer.alloc(pages * P);
  for (let i = 0; i < shadow.length; i++) shadow[i] = Math.floor(r() * 256);
  const ram = Buffer.from(shadow);
  for (let width = 0; width <= 32; width++) {
    const span = 2 ** width; // values base .. base + span - 1
    const base = width === 32 ? 0 : Math.floor(r() * (2 ** 32 - span));
    const step = 1024 / count;
    for (let k = 0; k < count; k++) {
      const off = width * P + 4 * Math.floor(k * step);
      const x = k % 64 === 0 ? 0 : k % 64 === 1 ? span - 1 : Math.floor(r() * span);
      let v = (base + x) >>> 0;
      if (v === shadow.readUInt32LE(off)) v = (v ^ (span > 1 ? 1 : 0)) >>> 0; // keep it a change
      ram.writeUInt32LE(v, off);
    }
  }
  return { ram, shadow };
}

t.test('dense pages as packed words: every width, every level, same bytes, reference decoder agrees', async (t) => {
  for (const count of [1024, 1023, 700, 319, 320, 321]) {
    const { ram, shadow } = widthScene(count, count);
    let first: Buffer | undefined;
    for (const level of cpuLevels()) {
      const sh = Buffer.from(shadow);
      const rec = encodeBatch(ram, sh, null, { level, dense: true });
      t.ok(sh.equals(ram), `${count} words, ${level}: shadow updated`);
      if (!first) first = rec;
      else t.ok(rec.equals(first), `${count} words: ${level} gives the same bytes`);
    }
    const kinds = [...batchRecords(first!)].map((r) => r.kind);
    const words = [...batchRecords(first!)].filter((r) => r.kind === RecordKind.Words);
    // Narrow values on pages whose deltas exceed 1 KiB: packed words, except near full width
    // (there the delta or the whole page is smaller).
    t.ok(words.length >= 20, `${count} words: ${words.length} of 33 pages as packed words (kinds ${kinds.join('')})`);
    for (const r of words) {
      const old = shadow.subarray(r.page * P, (r.page + 1) * P);
      const want = ram.subarray(r.page * P, (r.page + 1) * P);
      t.ok(refDecodeWords(r.payload, old).equals(want), `${count} words, page ${r.page}: reference decoder rebuilds it`);
      t.equal(r.crc32c, crc32c(want), 'record CRC is the new page');
      t.ok(r.length < P, 'shorter than the page');
    }
    const image = Buffer.from(shadow);
    t.equal(applyBatch(image, first!).records, 33);
    t.ok(image.equals(ram), `${count} words: applyBatch rebuilds every page`);
  }
});

t.test('packed words size: bitmap, group headers and width bits only', async (t) => {
  // Every word of the page replaced by values 1000..1000+255: 128 + 16 * (5 + 64) bytes.
  const shadow = Buffer.alloc(P, 0xee);
  const ram = Buffer.alloc(P);
  const r = rng(3);
  for (let w = 0; w < 1024; w++) ram.writeUInt32LE(1000 + (w % 64 === 0 ? 0 : w % 64 === 1 ? 255 : Math.floor(r() * 256)), 4 * w);
  const rec = encodeBatch(ram, Buffer.from(shadow), null, { dense: true });
  const [only] = [...batchRecords(rec)];
  t.equal(only!.kind, RecordKind.Words);
  t.equal(only!.length, 128 + 16 * (5 + 64));
  // Without dense the same page goes whole.
  t.equal([...batchRecords(encodeBatch(ram, Buffer.from(shadow), null))][0]!.kind, RecordKind.Full);
});

t.test('sparse pages stay XBZRLE deltas with dense', async (t) => {
  const shadow = Buffer.alloc(4 * P);
  for (let i = 0; i < shadow.length; i++) shadow[i] = (i * 131) & 0xff;
  const ram = Buffer.from(shadow);
  for (let p = 0; p < 4; p++) ram[p * P + 100 + p] ^= 0xff;
  const s = summarizeBatch(encodeBatch(ram, Buffer.from(shadow), null, { dense: true }));
  t.same([s.delta, s.words], [4, 0]);
});

t.test('corrupt packed words are refused, the image untouched', async (t) => {
  const { ram, shadow } = widthScene(300);
  const rec = encodeBatch(ram, Buffer.from(shadow), null, { dense: true });
  const recs = [...batchRecords(rec)];
  const w = recs.find((r) => r.kind === RecordKind.Words && r.payload[128 + 4]! > 4)!;
  const at = w.payload.byteOffset - rec.byteOffset; // payload offset in rec
  const hdr = at - RECORD_HEADER_BYTES;
  const only = Buffer.from(rec.subarray(hdr, at + w.length)); // the record alone
  const o = RECORD_HEADER_BYTES;
  const setLen = (b: Buffer, n: number) => (b.writeUInt32LE(n, 8), b);
  const cases: [string, (b: Buffer) => Buffer, RegExp][] = [
    ['width 33', (b) => ((b[o + 128 + 4] = 33), b), /bad packed words: width over 32 bits/],
    ['no word marked', (b) => (b.fill(0, o, o + 128), b), /bad packed words: the bitmap marks no word/],
    ['one word less marked', (b) => (flipLastBit(b, o), b), /trailing bytes|truncated|padding|checksum/],
    ['truncated values', (b) => setLen(b.subarray(0, b.length - 1), w.length - 1), /truncated/],
    ['shorter than the bitmap', (b) => setLen(b.subarray(0, o + 100), 100), /shorter than its 128-byte bitmap/],
    ['trailing byte', (b) => setLen(Buffer.concat([b, Buffer.from([0])]), w.length + 1), /trailing bytes/],
    ['value bit flipped', (b) => ((b[o + 128 + 5] ^= 0x01), b), /checksum/],
    ['padding bit set', (b) => ((b[b.length - 1] |= 0x80), b), /padding bits|checksum/],
    ['length 4096', (b) => setLen(Buffer.concat([b, Buffer.alloc(P - w.length)]), P), /invalid for its kind/],
  ];
  for (const [why, mutate, re] of cases) {
    const image = Buffer.from(shadow);
    t.throws(() => applyBatch(image, mutate(Buffer.from(only))), re, why);
    t.ok(image.equals(shadow), `${why}: image untouched`);
  }
  const image = Buffer.from(shadow);
  applyBatch(image, only);
  t.ok(image.subarray(w.page * P, (w.page + 1) * P).equals(ram.subarray(w.page * P, (w.page + 1) * P)), 'the intact record applies');
});

function flipLastBit(b: Buffer, o: number): void {
  for (let i = o + 127; i >= o; i--)
    if (b[i]) {
      b[i]! &= b[i]! - 1; // clear the lowest set bit of the last nonzero bitmap byte
      return;
    }
}

t.test('kind 3 (LZ4 byte planes, written by earlier builds) still applies', async (t) => {
  const old = Buffer.alloc(2 * P, 1);
  const page = Buffer.alloc(P);
  for (let w = 0; w < 1024; w++) page.writeUInt32LE(0x12340000 + w * 3, 4 * w);
  const planes = Buffer.alloc(P);
  for (let i = 0; i < 1024; i++) for (let b = 0; b < 4; b++) planes[b * 1024 + i] = page[4 * i + b]!;
  const block = compress('lz4', planes, 1); // a raw LZ4 block, as kind 3 holds
  t.ok(block.length < P, `planes compress to ${block.length} bytes`);
  const hdr = Buffer.alloc(RECORD_HEADER_BYTES);
  hdr.writeUInt32LE(1, 0);
  hdr[4] = RecordKind.PlanesLz4;
  hdr.writeUInt32LE(block.length, 8);
  hdr.writeUInt32LE(crc32c(page), 12);
  const rec = Buffer.concat([hdr, block]);
  const image = Buffer.from(old);
  applyBatch(image, rec);
  t.ok(image.subarray(P).equals(page), 'page 1 rebuilt from its planes');
  t.ok(image.subarray(0, P).equals(old.subarray(0, P)), 'page 0 untouched');
  const bad = Buffer.from(rec);
  bad[RECORD_HEADER_BYTES] ^= 0xff;
  const img2 = Buffer.from(old);
  t.throws(() => applyBatch(img2, bad), /LZ4|checksum/);
  t.ok(img2.equals(old), 'untouched after a corrupt LZ4 record');
});
