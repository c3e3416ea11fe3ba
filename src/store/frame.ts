// A frame is one stored blob: msgpack of {format, kind, codec, raw length, checksum, records,
// payload, and where it belongs: VM, version, list, index}. A frame says what it holds and whose
// it is, and is refused when it does not add up — or when it was copied from another VM,
// another version or another place in the list. The checksum (CRC32C) covers the binding and
// the raw bytes. It is not a MAC: anyone who can write the store can forge a frame.
import { pack, unpack } from 'msgpackr';
import { CODECS as KERNEL_CODECS, DEFAULT_LEVEL, compressAsync, crc32c, decompressAsync, type Codec } from '../kernel/index.js';

export type FrameKind = 'pages' | 'device';

/**
 * Frame format. 1: unbound frames (migsafe before frames named their VM and version), refused;
 * 2: bound (this file).
 */
export const FRAME_FORMAT = 2;

/** Largest page record (addon/src/batch.h): a 16-byte header and at most a whole page. */
export const MAX_RECORD_BYTES = 16 + 4096;

/** Largest device state a reader accepts (and a writer stores): QEMU's are a few MiB. */
export const MAX_DEVICE_STATE_BYTES = 256 << 20;

/** The kernel's codecs less raw deflate, which the store format has never used. */
const CODECS: readonly Codec[] = KERNEL_CODECS.filter((c) => c !== 'deflate');

export interface CodecChoice {
  codec: Codec;
  level: number;
}

/** The levels each codec takes (addon/src/codecs.cc): zlib's 0..9, LZ4 (HC from 2), zstd. */
const LEVELS: Partial<Record<Codec, [number, number]>> = { gzip: [0, 9], lz4: [0, 12], zstd: [0, 22] };

/** `--codec NAME[:LEVEL]`; an error names the codecs or the levels the codec takes. */
export function parseCodec(spec: string): CodecChoice {
  const [name, lvl, ...more] = spec.split(':');
  if (!CODECS.includes(name as Codec) || more.length) {
    throw new Error(`unknown codec "${spec}": use one of ${CODECS.join(', ')} (optionally with a level, e.g. zstd:3)`);
  }
  const codec = name as Codec;
  if (lvl === undefined) return { codec, level: DEFAULT_LEVEL[codec] };
  const range = LEVELS[codec];
  if (!range) throw new Error(`codec "${codec}" takes no level (got "${spec}"): give ${codec}`);
  const level = /^\d+$/.test(lvl) ? Number(lvl) : NaN;
  if (!(level >= range[0] && level <= range[1])) {
    throw new Error(`invalid codec level in "${spec}": ${codec} takes a whole number from ${range[0]} to ${range[1]}, e.g. ${codec}:${DEFAULT_LEVEL[codec]}`);
  }
  return { codec, level };
}

/** Where a frame belongs: it is valid there and nowhere else. */
export interface FrameBinding {
  vm: string;
  /** The version it is part of (for the base image: the version the base holds). */
  version: number;
  /** A version's chunk list, the base image's, or the device state. */
  list: 'version' | 'base' | 'device';
  /** Position in the list (0 for the device state). */
  index: number;
}

interface FrameWire {
  f: number;
  k: FrameKind;
  c: Codec;
  r: number;
  x: number;
  n: number;
  d: Uint8Array;
  m: string;
  v: number;
  l: FrameBinding['list'];
  i: number;
}

const describe = (b: { vm: unknown; version: unknown; list: unknown; index: unknown }) =>
  `VM "${String(b.vm)}" version ${String(b.version)} ${String(b.list)} frame ${String(b.index)}`;

/** The checksum: CRC32C of the binding and kind, then of the raw bytes. */
function checksum(kind: FrameKind, b: FrameBinding, raw: Uint8Array): number {
  const head = Buffer.from(`migsafe-frame|${FRAME_FORMAT}|${b.vm}|${b.version}|${b.list}|${b.index}|${kind}|`);
  return crc32c(raw, crc32c(head)) >>> 0;
}

/** Compresses `raw` and wraps it. `count` is the number of records inside (0 for device state). */
export async function encodeFrame(
  kind: FrameKind,
  raw: Uint8Array,
  count: number,
  codec: CodecChoice,
  bind: FrameBinding,
): Promise<Buffer> {
  const data = codec.codec === 'none' ? raw : await compressAsync(codec.codec, raw, codec.level);
  const wire: FrameWire = {
    f: FRAME_FORMAT,
    k: kind,
    c: codec.codec,
    r: raw.length,
    x: checksum(kind, bind, raw),
    n: count,
    d: data,
    m: bind.vm,
    v: bind.version,
    l: bind.list,
    i: bind.index,
  };
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

/** What the reader expects of a frame: where it belongs and how large it may be. */
export interface FrameExpectation {
  kind: FrameKind;
  bind: FrameBinding;
  /** pages: most records a frame may hold (the VM's page count). */
  maxRecords?: number;
  /** device: the exact raw length the version's metadata records. */
  rawBytes?: number;
}

const isCount = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;

/** Unwraps and checks one frame; `where` names it in errors. Nothing is allocated past the bounds. */
export async function decodeFrame(buf: Uint8Array, want: FrameExpectation, where: string): Promise<DecodedFrame> {
  let wire: FrameWire;
  try {
    wire = unpack(buf) as FrameWire;
  } catch (e) {
    throw new CorruptCheckpointError(`${where}: not a migsafe frame (${(e as Error).message})`);
  }
  if (typeof wire !== 'object' || wire === null || typeof wire.f !== 'number') {
    throw new CorruptCheckpointError(`${where}: not a migsafe frame`);
  }
  if (wire.f !== FRAME_FORMAT) {
    const older = wire.f < FRAME_FORMAT;
    throw new CorruptCheckpointError(
      `${where}: frame format ${wire.f} ` +
        (older
          ? `was written by an older migsafe (this one reads format ${FRAME_FORMAT}, whose frames are bound to their VM and version): ` +
            `recover it with the migsafe that wrote it, or delete these checkpoints (\`migsafe delete --vm ${want.bind.vm}\`) and take new ones`
          : `is newer than this migsafe understands (format ${FRAME_FORMAT}): use a newer migsafe`),
    );
  }
  const b = want.bind;
  if (wire.m !== b.vm || wire.v !== b.version || wire.l !== b.list || wire.i !== b.index) {
    throw new CorruptCheckpointError(
      `${where}: foreign frame: it belongs to ${describe({ vm: wire.m, version: wire.v, list: wire.l, index: wire.i })}, ` +
        `not to ${describe(b)} (copied from another VM, version or place in the store)`,
    );
  }
  if (wire.k !== want.kind) throw new CorruptCheckpointError(`${where}: holds ${String(wire.k)}, expected ${want.kind}`);
  if (!CODECS.includes(wire.c)) throw new CorruptCheckpointError(`${where}: unknown codec ${String(wire.c)}`);
  if (!isCount(wire.r) || !isCount(wire.n) || !(wire.d instanceof Uint8Array)) {
    throw new CorruptCheckpointError(`${where}: malformed frame header`);
  }
  // Bound the raw length before anything is allocated for it.
  if (want.kind === 'pages') {
    const maxRecords = want.maxRecords ?? 0;
    if (wire.n > maxRecords) {
      throw new CorruptCheckpointError(`${where}: header says ${wire.n} page records, more than the VM's ${maxRecords} pages`);
    }
    if (wire.r > wire.n * MAX_RECORD_BYTES) {
      throw new CorruptCheckpointError(
        `${where}: header says ${wire.r} raw bytes, more than ${wire.n} records can hold (${wire.n * MAX_RECORD_BYTES})`,
      );
    }
  } else {
    if (wire.r > MAX_DEVICE_STATE_BYTES) {
      throw new CorruptCheckpointError(`${where}: header says ${wire.r} bytes, more than the device state cap of ${MAX_DEVICE_STATE_BYTES >> 20} MiB`);
    }
    if (want.rawBytes !== undefined && wire.r !== want.rawBytes) {
      throw new CorruptCheckpointError(`${where}: header says ${wire.r} bytes, the version's metadata says ${want.rawBytes} (truncated or replaced)`);
    }
  }
  if (wire.c === 'none' && wire.d.length !== wire.r) {
    throw new CorruptCheckpointError(`${where}: ${wire.d.length} bytes, header says ${wire.r}`);
  }
  let raw: Buffer;
  try {
    raw = wire.c === 'none' ? Buffer.from(wire.d) : await decompressAsync(wire.c, wire.d, wire.r);
  } catch (e) {
    throw new CorruptCheckpointError(`${where}: cannot decompress (${(e as Error).message})`);
  }
  if (raw.length !== wire.r) throw new CorruptCheckpointError(`${where}: ${raw.length} bytes, header says ${wire.r}`);
  if (checksum(wire.k, b, raw) !== wire.x >>> 0) throw new CorruptCheckpointError(`${where}: checksum mismatch`);
  return { kind: wire.k, raw, count: wire.n };
}
