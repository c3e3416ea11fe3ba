// The typed face of the C++ addon (addon/). Everything here is mechanism; policy lives in TS.
// Loaded once; cmake-js and node-gyp both put the module at build/Release/migsafe.node.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const PAGE_SIZE = 4096;

/** SIMD level of the page kernel. `scalar` is the portable word-at-a-time path. */
export type CpuLevel = 'avx512bw' | 'avx2' | 'scalar';

/** `gzip`: zlib with gzip framing; `deflate`: raw deflate (no header). */
export type Codec = 'none' | 'gzip' | 'deflate' | 'lz4' | 'zstd';

/** Kinds of a batch record (see RECORD format in addon/src/batch.h and docs/kernel.md). */
export const enum RecordKind {
  /** The page is all zero bytes; no payload. */
  Zero = 0,
  /** XBZRLE delta (QEMU's format) against the previous checkpointed contents; 1..4096 bytes. */
  Delta = 1,
  /** The whole page; 4096 bytes. */
  Full = 2,
  /** LZ4 block of the page's byte planes (4-byte words); 1..4095 bytes. Read only: earlier builds wrote it with `dense`. */
  PlanesLz4 = 3,
  /**
   * Packed words against the previous checkpointed contents: the 32-bit words that changed,
   * bit-packed in groups of 64 (format in addon/src/words.cc); 1..4095 bytes. Only with `dense`.
   */
  Words = 4,
}

/** Size of one record header in a batch buffer. */
export const RECORD_HEADER_BYTES = 16;

export interface EncodeBatchOptions {
  /** SIMD level; default: best available. */
  level?: CpuLevel;
  /** Worker threads for the batch (default 1). */
  threads?: number;
  /** Copy each encoded page into the shadow (default true). */
  updateShadow?: boolean;
  /**
   * Per-page choice for dense pages (default false): when the delta exceeds 1024 bytes or the
   * page would go whole, also try packed words (RecordKind.Words) and keep the smaller. This is
   * the combined mode (docs/kernel.md).
   */
  dense?: boolean;
}

/** Options of the in-addon benchmark loop (see bench/diff.ts). */
export interface BenchKernelOptions {
  level?: CpuLevel;
  /** Timed repeats (default 5). */
  repeats?: number;
  /** Passes over all pairs per repeat (default 1). */
  inner?: number;
  /** For `compress-page`. */
  codec?: Codec;
  codecLevel?: number;
  /** `floor` only: each pass split over this many threads (default 1); time it by `seconds`. */
  threads?: number;
}

/** Kernel loops run inside the addon, timed with a monotonic clock. */
export type BenchKernelOp = 'encode' | 'encode-overlapped' | 'wordwise' | 'floor' | 'decode' | 'crc' | 'batch' | 'compress-page';

export interface ApplyResult {
  /** Records applied. */
  records: number;
}

export interface NativeAddon {
  /** Best SIMD level this CPU supports (CPUID at load time). */
  cpuLevel(): CpuLevel;
  /** Every level this CPU can run, best first. */
  levels(): CpuLevel[];

  /** Whether crc32c uses the SSE4.2 instruction. */
  crc32cHardware(): boolean;

  /**
   * XBZRLE delta of one 4096-byte page; empty when unchanged; null when QEMU's encoder would
   * overflow its 4096-byte output (the page is then sent whole).
   */
  encodePage(oldPage: Uint8Array, newPage: Uint8Array, level?: CpuLevel): Buffer | null;
  /** Same bytes as encodePage, by a word-at-a-time encoder structured like QEMU's C encoder. */
  encodePageWordwise(oldPage: Uint8Array, newPage: Uint8Array): Buffer | null;
  /** Applies an XBZRLE delta to a copy of oldPage. Throws on malformed input. */
  decodePage(oldPage: Uint8Array, delta: Uint8Array): Buffer;

  /**
   * Encodes the pages of `ram` that differ from `shadow` into one buffer of records.
   * `pages` lists candidate page indexes (a set: repeats count once; out of range throws); null
   * scans every page. Unchanged pages give no record.
   * Records: u32 page, u8 kind, u8 0, u16 0, u32 length, u32 crc32c(new page), payload.
   */
  encodeBatch(ram: Uint8Array, shadow: Uint8Array, pages: Uint32Array | null, opts?: EncodeBatchOptions): Buffer;
  /**
   * encodeBatch into `out`: returns the bytes written, or -1 (before encoding anything) when
   * `out` is smaller than batchBound(candidate pages).
   */
  encodeBatchInto(ram: Uint8Array, shadow: Uint8Array, pages: Uint32Array | null, opts: EncodeBatchOptions | undefined, out: Uint8Array): number;
  /** Bytes a batch of this many candidate pages can need while it is encoded. */
  batchBound(pages: number): number;
  /** Same as encodeBatch, off the event loop. `ram` and `shadow` must not be touched until it settles. */
  encodeBatchAsync(
    ram: Uint8Array,
    shadow: Uint8Array,
    pages: Uint32Array | null,
    opts?: EncodeBatchOptions,
  ): Promise<Buffer>;
  /**
   * Applies a record buffer to a page-indexed image: decodes and checksums every record first,
   * then writes. Any malformed record, out-of-range page or checksum mismatch throws and leaves
   * the image untouched.
   */
  applyBatch(image: Uint8Array, records: Uint8Array): ApplyResult;

  /** Indexes of pages that differ between ram and shadow (SIMD compare). */
  scanDirty(ram: Uint8Array, shadow: Uint8Array, level?: CpuLevel): Uint32Array;

  compress(codec: Codec, level: number, data: Uint8Array): Buffer;
  /** rawLength is the exact expected output size; a mismatch throws. */
  decompress(codec: Codec, data: Uint8Array, rawLength: number): Buffer;
  compressAsync(codec: Codec, level: number, data: Uint8Array): Promise<Buffer>;
  decompressAsync(codec: Codec, data: Uint8Array, rawLength: number): Promise<Buffer>;

  /**
   * A codec over the combined mode, see packBatch in src/kernel/codecs.ts: records with payload <= smallMax, and
   * larger XBZRLE deltas an LZ4 probe finds compressible, go into one compressed frame; the
   * rest is stored.
   */
  packBatch(records: Uint8Array, codec: Codec, level: number, smallMax: number): Buffer;
  /** Inverse of packBatch: a record buffer for applyBatch (compressed part first). */
  unpackBatch(packed: Uint8Array): Buffer;

  /** CRC32C (Castagnoli), hardware-accelerated when available. */
  crc32c(data: Uint8Array, seed?: number): number;

  /**
   * mmap(MAP_SHARED) a file: guest RAM shared with QEMU. The Buffer aliases the mapping, which
   * lives until the Buffer is garbage-collected. With writable=false the mapping is read-only:
   * writing to the Buffer kills the process (SIGSEGV).
   */
  mapFile(path: string, size: number, writable: boolean): Buffer;

  /**
   * Indexes of the pages of a file (an fd, or a path opened for the call) that hold data, by
   * lseek(SEEK_DATA/SEEK_HOLE), off the event loop; no page is read. addon/src/datapages.cc.
   */
  dataPagesAsync(file: number | string, pageSize: number): Promise<Uint32Array>;

  // The patched QEMU's migsafe-ft socket (qemu-patches/PROTOCOL.md), addon/src/fdpass.cc.
  /** Connects a SOCK_SEQPACKET unix socket; returns its fd. */
  ftConnect(path: string): number;
  /** Sends one message, with one fd as SCM_RIGHTS if given. */
  ftSend(fd: number, message: string, sendFd?: number): void;
  /** Receives one message and the fds that came with it; throws after timeoutMs. */
  ftRecv(fd: number, timeoutMs: number): { message: string; fds: number[] };
  /** Adds 1 to an eventfd. */
  eventfdSignal(fd: number): void;
  /** Waits (off the event loop) for an eventfd; resolves with its counter, 0 on timeout. */
  eventfdWaitAsync(fd: number, timeoutMs: number): Promise<number>;
  /** mmap(MAP_SHARED) of an fd; the Buffer aliases the mapping. */
  mapFd(fd: number, length: number, offset: number, writable: boolean): Buffer;
  closeFd(fd: number): void;

  /**
   * Runs a kernel loop over page pairs (8192-byte records: old page, new page) inside the
   * addon. Returns the wall and thread-CPU time of each repeat (seconds for `inner` passes;
   * setup excluded) and the output bytes of one pass.
   */
  benchKernel(
    op: BenchKernelOp,
    pairs: Uint8Array,
    opts?: BenchKernelOptions,
  ): { seconds: number[]; cpuSeconds: number[]; bytes: number };
}

function findAddon(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  // dist/src/kernel -> repository root; also works from src/kernel when run from source.
  for (const up of ['../../..', '../..']) {
    const p = join(here, up, 'build', 'Release', 'migsafe.node');
    if (existsSync(p)) return p;
  }
  throw new Error(
    'migsafe: the native addon is not built (build/Release/migsafe.node is missing). Run `npm run build`.',
  );
}

let cached: NativeAddon | undefined;

/** The addon, loaded on first use. */
export function native(): NativeAddon {
  if (!cached) {
    const require = createRequire(import.meta.url);
    cached = require(findAddon()) as NativeAddon;
  }
  return cached;
}
