// A frame is one stored blob: msgpack of {format, kind, codec, raw length, CRC32C of the raw
// bytes, payload}. A frame says what it holds and is refused when it does not add up.
import { pack, unpack } from 'msgpackr';
import { CODECS as KERNEL_CODECS, DEFAULT_LEVEL, compressAsync, crc32c, decompressAsync, type Codec } from '../kernel/index.js';
import { STORE_FORMAT } from './keys.js';

export type FrameKind = 'pages' | 'device';

// The kernel's codecs less raw deflate, which the store format has never used.
const CODECS: readonly Codec[] = KERNEL_CODECS.filter((c) => c !== 'deflate');

export interface CodecChoice {
  codec: Codec;
  level: number;
}

export function parseCodec(spec: string): CodecChoice {
  const [name, lvl] = spec.split(':');
  if (!CODECS.includes(name as Codec)) {
    throw new Error(`unknown codec "${spec}": use one of ${CODECS.join(', ')} (optionally with a level, e.g. zstd:3)`);
  }
  const level = lvl === undefined ? DEFAULT_LEVEL[name as Codec] : Number(lvl);
  if (!Number.isInteger(level) || level < 0 || level > 22) throw new Error(`invalid codec level in "${spec}"`);
  return { codec: name as Codec, level };
}

interface FrameWire {
  f: number;
  k: FrameKind;
  c: Codec;
  r: number;
  x: number;
  n: number;
  d: Uint8Array;
}

/** Compresses `raw` and wraps it. `count` is the number of records inside (0 for device state). */
export async function encodeFrame(kind: FrameKind, raw: Uint8Array, count: number, codec: CodecChoice): Promise<Buffer> {
  const data = codec.codec === 'none' ? raw : await compressAsync(codec.codec, raw, codec.level);
  const wire: FrameWire = { f: STORE_FORMAT, k: kind, c: codec.codec, r: raw.length, x: crc32c(raw), n: count, d: data };
  return pack(wire);
}

export interface DecodedFrame {
  kind: FrameKind;
  raw: Buffer;
  count: number;
}

export class CorruptCheckpointError extends Error {
  override name = 'CorruptCheckpointError';
}

/** Unwraps and checks one frame; `where` names it in errors. */
export async function decodeFrame(buf: Uint8Array, expect: FrameKind, where: string): Promise<DecodedFrame> {
  let wire: FrameWire;
  try {
    wire = unpack(buf) as FrameWire;
  } catch (e) {
    throw new CorruptCheckpointError(`${where}: not a migsafe frame (${(e as Error).message})`);
  }
  if (typeof wire !== 'object' || wire === null || typeof wire.f !== 'number') {
    throw new CorruptCheckpointError(`${where}: not a migsafe frame`);
  }
  if (wire.f !== STORE_FORMAT) {
    throw new CorruptCheckpointError(`${where}: frame format ${wire.f} is not understood by this migsafe (format ${STORE_FORMAT})`);
  }
  if (wire.k !== expect) throw new CorruptCheckpointError(`${where}: holds ${String(wire.k)}, expected ${expect}`);
  if (!CODECS.includes(wire.c)) throw new CorruptCheckpointError(`${where}: unknown codec ${String(wire.c)}`);
  if (!Number.isInteger(wire.r) || wire.r < 0 || !(wire.d instanceof Uint8Array)) {
    throw new CorruptCheckpointError(`${where}: malformed frame header`);
  }
  let raw: Buffer;
  try {
    raw = wire.c === 'none' ? Buffer.from(wire.d) : await decompressAsync(wire.c, wire.d, wire.r);
  } catch (e) {
    throw new CorruptCheckpointError(`${where}: cannot decompress (${(e as Error).message})`);
  }
  if (raw.length !== wire.r) throw new CorruptCheckpointError(`${where}: ${raw.length} bytes, header says ${wire.r}`);
  if (crc32c(raw) >>> 0 !== wire.x >>> 0) throw new CorruptCheckpointError(`${where}: checksum mismatch`);
  return { kind: wire.k, raw, count: wire.n };
}
