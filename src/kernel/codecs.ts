// Codecs over batches (zlib, LZ4, zstd from the system libraries via the addon), CRC32C, and
// the combined mode: delta first, then compress what compresses.
import { native, RECORD_HEADER_BYTES, type Codec } from './native.js';

/** Default level per codec: fast settings, since checkpoints stream continuously. */
export const DEFAULT_LEVEL: Record<Codec, number> = { none: 0, gzip: 1, deflate: 1, lz4: 1, zstd: 1 };

export const CODECS: readonly Codec[] = ['none', 'gzip', 'deflate', 'lz4', 'zstd'];

/** Compresses data as one frame. Levels: gzip/deflate 0..9, lz4 1 (fast) or 2..12 (HC), zstd -7..22. */
export function compress(codec: Codec, data: Uint8Array, level = DEFAULT_LEVEL[codec]): Buffer {
  return native().compress(codec, level, data);
}

/** Inverse of compress; rawLength must be the exact original size (anything else throws). */
export function decompress(codec: Codec, data: Uint8Array, rawLength: number): Buffer {
  return native().decompress(codec, data, rawLength);
}

export function compressAsync(codec: Codec, data: Uint8Array, level = DEFAULT_LEVEL[codec]): Promise<Buffer> {
  return native().compressAsync(codec, level, data);
}

export function decompressAsync(codec: Codec, data: Uint8Array, rawLength: number): Promise<Buffer> {
  return native().decompressAsync(codec, data, rawLength);
}

/** CRC32C (Castagnoli); chain with crc32c(b, crc32c(a)) == crc32c(a ‖ b). */
export function crc32c(data: Uint8Array, seed = 0): number {
  return native().crc32c(data, seed);
}

// ---- Combined mode -------------------------------------------------------------------------
//
// A batch from encodeBatch(..., { dense: true }) holds small XBZRLE deltas, which compress well
// together (headers and neighbouring pages repeat), and large payloads (dense deltas, whole
// pages, LZ4 byte planes) that a general codec barely shrinks but spends most of its time on.
// packBatch compresses the small records as one frame and stores the large ones as they are.
//
// Packed layout, little-endian:
//   "MSPK"  u8 version=1  u8 codec  u16 0  u32 rawSmall  u32 packedSmall  u32 largeBytes
//   packedSmall bytes (records with payload <= smallMax, compressed)
//   largeBytes bytes (the other records, stored)
// unpackBatch returns a record buffer (small records first): applyBatch does not depend on order.

const MAGIC = 0x4b50534d; // "MSPK"
const PACK_HEADER = 20;
const CODEC_IDS: Codec[] = ['none', 'gzip', 'deflate', 'lz4', 'zstd'];

export interface PackOptions {
  codec?: Codec;
  level?: number;
  /** Records whose payload is at most this many bytes go to the compressed part (default 1024). */
  smallMax?: number;
}

export function packBatch(records: Uint8Array, opts: PackOptions = {}): Buffer {
  const codec = opts.codec ?? 'zstd';
  const level = opts.level ?? DEFAULT_LEVEL[codec];
  const smallMax = opts.smallMax ?? 1024;
  const b = Buffer.from(records.buffer, records.byteOffset, records.byteLength);
  const small: Buffer[] = [];
  const large: Buffer[] = [];
  let smallBytes = 0;
  let largeBytes = 0;
  for (let off = 0; off < b.length; ) {
    if (b.length - off < RECORD_HEADER_BYTES) throw new RangeError(`packBatch: truncated header at byte ${off}`);
    const end = off + RECORD_HEADER_BYTES + b.readUInt32LE(off + 8);
    if (end > b.length) throw new RangeError(`packBatch: payload truncated at byte ${off}`);
    const rec = b.subarray(off, end);
    if (end - off - RECORD_HEADER_BYTES <= smallMax) {
      small.push(rec);
      smallBytes += rec.length;
    } else {
      large.push(rec);
      largeBytes += rec.length;
    }
    off = end;
  }
  const packed = compress(codec, Buffer.concat(small, smallBytes), level);
  const out = Buffer.allocUnsafe(PACK_HEADER + packed.length + largeBytes);
  out.writeUInt32LE(MAGIC, 0);
  out[4] = 1;
  out[5] = CODEC_IDS.indexOf(codec);
  out.writeUInt16LE(0, 6);
  out.writeUInt32LE(smallBytes, 8);
  out.writeUInt32LE(packed.length, 12);
  out.writeUInt32LE(largeBytes, 16);
  packed.copy(out, PACK_HEADER);
  let pos = PACK_HEADER + packed.length;
  for (const r of large) pos += r.copy(out, pos);
  return out;
}

export function unpackBatch(packed: Uint8Array): Buffer {
  const b = Buffer.from(packed.buffer, packed.byteOffset, packed.byteLength);
  if (b.length < PACK_HEADER || b.readUInt32LE(0) !== MAGIC) throw new RangeError('unpackBatch: not a packed batch');
  if (b[4] !== 1) throw new RangeError(`unpackBatch: unsupported version ${b[4]}`);
  const codec = CODEC_IDS[b[5]!];
  if (!codec || b.readUInt16LE(6) !== 0) throw new RangeError('unpackBatch: bad header');
  const rawSmall = b.readUInt32LE(8);
  const packedSmall = b.readUInt32LE(12);
  const largeBytes = b.readUInt32LE(16);
  if (PACK_HEADER + packedSmall + largeBytes !== b.length) throw new RangeError('unpackBatch: lengths do not match the buffer');
  const small = decompress(codec, b.subarray(PACK_HEADER, PACK_HEADER + packedSmall), rawSmall);
  return Buffer.concat([small, b.subarray(PACK_HEADER + packedSmall)], rawSmall + largeBytes);
}
