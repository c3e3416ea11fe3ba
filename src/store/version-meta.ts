// What a committed version says about itself (the `migsafe:{id}:v:{n}` hash).

/**
 * Where the version's dirty pages came from (the dirty sources of src/qemu; spelled here, since
 * the store and src/qemu do not import each other).
 */
export type DirtySourceName = 'bitmap' | 'scan' | 'present-pages';

export interface VersionMeta {
  version: number;
  /** Version this one's deltas apply to; 0 when it is complete on its own (from a zero image). */
  parent: number;
  committedAt: number;
  /** Page records in this version. */
  pages: number;
  /** 4096 × pages. */
  bytesRaw: number;
  /** Bytes of page data in Redis for this version (compressed frames; device state not included). */
  bytesStored: number;
  /** How long the VM was paused for stage 2. */
  pauseMs: number;
  deviceStateBytes: number;
  /** Bytes of the device state in Redis (compressed). */
  deviceStateStored: number;
  dirtySource: DirtySourceName;
  /** Frames in the version's chunk list: a commit checks it, a reader checks it again. */
  chunks: number;
  codec: string;
  /** Pages sent in stage 1 (VM running) and stage 2 (VM paused). */
  stage1Pages: number;
  stage2Pages: number;
  /**
   * The lease it was committed under ("host|token"; absent when unfenced): which writer made it,
   * and proof that no stale owner got a version in (the commit script checked this lease).
   */
  writer?: string;
  /** The durability policy it was committed under: fsync, replicas:N or none (durability.ts). */
  durability?: string;
  /** replicas:N: when N replicas had acknowledged it (absent: not, or not yet marked). */
  acknowledgedAt?: number;
  /** Only on the version the base image holds: frames in the base image (set by compaction). */
  baseChunks?: number;
  /** Its frames spread over a cluster's primaries: the descriptor (stripes.ts); absent: one list, v:{n}:chunks. */
  stripes?: string;
  /** Only on the version the base image holds: the base image's stripes; absent: one list, base:chunks. */
  baseStripes?: string;
  /** Bytes of the page index of its chunk list (v:{n}:index, page-index.ts); absent: none (older migsafe). */
  indexBytes?: number;
  /** Only on the version the base image holds: bytes of the base image's page index (base:index). */
  baseIndexBytes?: number;
}

/**
 * Whether the version is durable by its policy: fsync yes (the commit replied after the fsync),
 * none no, replicas:N once acknowledged; null for versions that do not say (older migsafe).
 */
export function isDurable(m: VersionMeta): boolean | null {
  if (m.durability === undefined) return null;
  if (m.durability === 'fsync') return true;
  if (m.durability.startsWith('replicas:')) return m.acknowledgedAt !== undefined;
  return false;
}

const NUMERIC: (keyof VersionMeta)[] = [
  'version',
  'parent',
  'committedAt',
  'pages',
  'bytesRaw',
  'bytesStored',
  'pauseMs',
  'deviceStateBytes',
  'deviceStateStored',
  'chunks',
  'stage1Pages',
  'stage2Pages',
];

export function metaToHash(m: VersionMeta): string[] {
  return Object.entries(m).flatMap(([k, v]) => [k, String(v)]);
}

/** Counts only some versions have. */
const OPTIONAL_COUNTS: (keyof VersionMeta)[] = ['baseChunks', 'indexBytes', 'baseIndexBytes'];

/** Fields that count something: whole numbers, never negative. */
const COUNTS = new Set<keyof VersionMeta>(NUMERIC.filter((k) => k !== 'committedAt' && k !== 'pauseMs'));

export function metaFromHash(h: Record<string, string>, where: string): VersionMeta {
  const out: Record<string, unknown> = { ...h };
  for (const k of [...NUMERIC, ...OPTIONAL_COUNTS]) {
    if (OPTIONAL_COUNTS.includes(k) && h[k] === undefined) continue;
    const v = Number(h[k]);
    if (h[k] === undefined || !Number.isFinite(v)) throw new Error(`${where}: metadata field ${k} is missing or not a number`);
    if ((COUNTS.has(k) || OPTIONAL_COUNTS.includes(k)) && (!Number.isSafeInteger(v) || v < 0)) {
      throw new Error(`${where}: metadata field ${k} is ${h[k]}, not a whole number`);
    }
    out[k] = v;
  }
  if (h.acknowledgedAt !== undefined) out.acknowledgedAt = Number(h.acknowledgedAt);
  return out as unknown as VersionMeta;
}
