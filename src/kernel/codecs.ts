// Codecs over batches (zlib, LZ4, zstd from the system libraries via the addon), CRC32C, and
// the combined mode: delta first, then compress what compresses.
import { native, type Codec } from './native.js';

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

// ---- A codec over the combined mode ------------------------------------------------------
//
// A batch from encodeBatch(..., { dense: true }) (the combined mode: XBZRLE or packed words per
// page) holds small XBZRLE deltas, which compress well together (headers and neighbouring
// pages repeat), and large payloads (dense deltas, whole pages, packed words) that a general
// codec mostly cannot shrink but spends most of its time on. packBatch compresses the small
// records, plus the large deltas that a fast LZ4 probe finds compressible (no probe with codec
// none), as one frame and stores the others as they are (in the addon).
//
// Packed layout, little-endian:
//   "MSPK"  u8 version=1  u8 codec (0 none, 1 gzip, 2 deflate, 3 lz4, 4 zstd)  u16 0
//   u32 rawSmall  u32 packedSmall  u32 largeBytes
//   packedSmall bytes (the compressed records), largeBytes bytes (the stored records)
// unpackBatch returns a record buffer (compressed part first): applyBatch does not depend on
// the order of records.

export interface PackOptions {
  codec?: Codec;
  level?: number;
  /** Records whose payload is at most this many bytes always go to the compressed part (default 1024). */
  smallMax?: number;
}

export function packBatch(records: Uint8Array, opts: PackOptions = {}): Buffer {
  const codec = opts.codec ?? 'zstd';
  return native().packBatch(records, codec, opts.level ?? DEFAULT_LEVEL[codec], opts.smallMax ?? 1024);
}

export function unpackBatch(packed: Uint8Array): Buffer {
  return native().unpackBatch(packed);
}
