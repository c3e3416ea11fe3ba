// Codecs and CRC32C: round trips, exact-length and corruption checks, the combined mode.
import t from 'tap';
import {
  CODECS,
  compress,
  compressAsync,
  crc32c,
  decompress,
  decompressAsync,
  packBatch,
  unpackBatch,
} from '../../src/kernel/codecs.js';
import { native } from '../../src/kernel/native.js';
import { applyBatch, encodeBatch } from '../../src/kernel/page-delta.js';
import { corpusDir, loadPairs, rng } from './corpus.js';

/** Bitwise CRC32C, the definition. */
function crcRef(data: Uint8Array, seed = 0): number {
  let c = ~seed >>> 0;
  for (const b of data) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return ~c >>> 0;
}

t.test('crc32c', async (t) => {
  t.equal(crc32c(Buffer.from('123456789')), 0xe3069283, 'check value');
  t.equal(crc32c(Buffer.alloc(0)), 0);
  const r = rng(5);
  for (const len of [1, 7, 8, 100, 4080, 4096, 4097, 12288, 100000]) {
    const b = Buffer.alloc(len);
    for (let i = 0; i < len; i++) b[i] = Math.floor(r() * 256);
    t.equal(crc32c(b), crcRef(b), `length ${len}`);
    const cut = Math.floor(len / 3);
    t.equal(crc32c(b.subarray(cut), crc32c(b.subarray(0, cut))), crc32c(b), `chained at ${cut}`);
  }
  t.type(native().crc32cHardware(), 'boolean');
});

t.test('codecs round trip; rawLength must be exact; corruption is refused', async (t) => {
  const r = rng(9);
  const data = Buffer.alloc(50000);
  for (let i = 0; i < data.length; i++) data[i] = r() < 0.7 ? 0 : Math.floor(r() * 256);
  for (const codec of CODECS) {
    const levels = codec === 'zstd' ? [-3, 1, 3, 19] : codec === 'lz4' ? [1, 9] : codec === 'none' ? [0] : [1, 6, 9];
    for (const level of levels) {
      const z = compress(codec, data, level);
      if (codec !== 'none') t.ok(z.length < data.length, `${codec}/${level} compresses (${z.length})`);
      t.ok(decompress(codec, z, data.length).equals(data), `${codec}/${level} round trip`);
      t.throws(() => decompress(codec, z, data.length + 1), `${codec}: rawLength too large`);
      if (codec !== 'none') t.throws(() => decompress(codec, z, data.length - 1), `${codec}: rawLength too small`);
    }
    if (codec !== 'none') {
      const z = compress(codec, data);
      const bad = Buffer.from(z.subarray(0, z.length >> 1));
      t.throws(() => decompress(codec, bad, data.length), `${codec}: truncated input`);
    }
    t.ok(decompress(codec, compress(codec, Buffer.alloc(0)), 0).length === 0, `${codec}: empty`);
  }
  t.throws(() => compress('brotli' as never, data), /unknown codec/);
  t.throws(() => compress('gzip', data, 12), /level/);
});

t.test('async codecs', async (t) => {
  const data = Buffer.alloc(100000, 'abcabcabd');
  const z = await compressAsync('zstd', data, 3);
  t.ok((await decompressAsync('zstd', z, data.length)).equals(data));
  await t.rejects(decompressAsync('lz4', Buffer.from('garbage!'), 10));
});

t.test('combined mode: pack/unpack, and fewer bytes than plain XBZRLE', { skip: !corpusDir() && 'no corpus' }, async (t) => {
  for (const f of ['idle', 'kv', 'qsort']) {
    const pairs = loadPairs(f);
    const n = pairs.length / 8192;
    const ram = Buffer.alloc(n * 4096);
    const shadow = Buffer.alloc(n * 4096);
    for (let i = 0; i < n; i++) {
      pairs.copy(shadow, i * 4096, i * 8192, i * 8192 + 4096);
      pairs.copy(ram, i * 4096, i * 8192 + 4096, i * 8192 + 8192);
    }
    const plain = encodeBatch(ram, shadow, null, { updateShadow: false });
    const dense = encodeBatch(ram, shadow, null, { updateShadow: false, dense: true });
    for (const codec of ['zstd', 'lz4', 'none'] as const) {
      const packed = packBatch(dense, { codec });
      t.ok(packed.length < plain.length, `${f}/${codec}: packed ${packed.length} < records ${plain.length}`);
      const image = Buffer.from(shadow);
      applyBatch(image, unpackBatch(packed));
      t.ok(image.equals(ram), `${f}/${codec}: unpacked batch applies`);
    }
  }
  t.throws(() => unpackBatch(Buffer.from('not a packed batch at all')), /not a packed batch/);
  const p = packBatch(Buffer.alloc(0));
  t.equal(unpackBatch(p).length, 0, 'empty batch');
  const bad = Buffer.from(p);
  bad.writeUInt32LE(5, 16);
  t.throws(() => unpackBatch(bad), /lengths/);
});
