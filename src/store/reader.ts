// Folding committed versions into one RAM image: base, then each delta version in order.
// Everything is checked (chain, counts, frame binding, per-page CRC) before anything leaves
// this module. The store is input like any other: a parent link that does not go back in time
// is refused (so a chain cannot loop), every length is bounded before it is allocated, and a
// read that races compaction either gets every frame it planned for — each bound to its VM,
// version and place — or starts again from a new plan; it never returns a short image.
import { applyBatch } from '../kernel/page-delta.js';
import type { ChunkList, CheckpointStore, VmRecord } from './checkpoint-store.js';
import { CorruptCheckpointError, decodeFrame, type FrameBinding } from './frame.js';
import type { VersionMeta } from './version-meta.js';
import { stripeShare } from './stripes.js';

export class MissingCheckpointError extends Error {
  override name = 'MissingCheckpointError';
}

export interface RestorePlan {
  vm: VmRecord;
  target: VersionMeta;
  /** Start from the compacted base image of this version (0 = from a zero image). */
  base: number;
  /** Frames in the base image (its version's metadata, baseChunks); 0 without a base. */
  baseChunks: number;
  /** The base image's stripes on a cluster (its version's metadata, baseStripes; stripes.ts). */
  baseStripes?: string;
  /** Bytes of the base image's page index (its version's metadata, baseIndexBytes); absent: none. */
  baseIndexBytes?: number;
  /** Versions applied on top of the base, oldest first; ends with the target. */
  chain: VersionMeta[];
}

export interface LoadProgress {
  /** Frames read so far and in all. */
  done: number;
  total: number;
}

export interface LoadedImage {
  plan: RestorePlan;
  image: Buffer;
  deviceState: Buffer;
  pagesApplied: number;
}

/** Committed versions and the base as one instant saw them (CheckpointStore.snapshot). */
export interface StoreSnapshot {
  committed: number[];
  base: number;
}

/** Reads of a version that compaction keeps invalidating give up after this many plans. */
const MAX_ATTEMPTS = 5;

/** Works out which stored data make up `version` (default: the newest), or says what is missing. */
export async function planRestore(store: CheckpointStore, version?: number, snap?: StoreSnapshot): Promise<RestorePlan> {
  const vm = await store.vm();
  if (!vm) throw new MissingCheckpointError(`no VM "${store.vmId}" in the store: check --vm (see \`migsafe inspect\`)`);
  store.checkFormat(vm);
  const { committed, base } = snap ?? (await store.snapshot());
  if (committed.length === 0) throw new MissingCheckpointError(`VM "${store.vmId}" has no committed checkpoint yet`);
  const want = version ?? committed[committed.length - 1]!;
  if (!committed.includes(want)) {
    const range = `committed versions: ${committed[0]}..${committed[committed.length - 1]} (${committed.length})`;
    throw new MissingCheckpointError(
      base && want < base
        ? `version ${want} of VM "${store.vmId}" was folded into the base image (version ${base}) by compaction: recover version ${base} or a later one; ${range}`
        : `version ${want} of VM "${store.vmId}" is not committed; ${range}`,
    );
  }
  let chain: VersionMeta[];
  try {
    chain = await walkChain(store, want, committed, base);
  } catch (e) {
    if (!(e instanceof CorruptCheckpointError)) throw e;
    throw new CorruptCheckpointError(`${e.message}; nothing was restored. ${await adviseOlder(store, e, committed, base)}`);
  }
  const usesBase = chain[0]!.version === base && base !== 0;
  let baseChunks = 0;
  if (usesBase) {
    baseChunks = chain[0]!.baseChunks ?? 0;
    if (baseChunks < 1) {
      throw new CorruptCheckpointError(`VM "${store.vmId}": the base image (version ${base}) has no frame count in its metadata (baseChunks)`);
    }
  }
  const baseStripes = usesBase ? chain[0]!.baseStripes : undefined;
  const baseIndexBytes = usesBase ? chain[0]!.baseIndexBytes : undefined;
  return {
    vm,
    target: chain[chain.length - 1]!,
    base: usesBase ? base : 0,
    baseChunks,
    ...(baseStripes ? { baseStripes } : {}),
    ...(baseIndexBytes !== undefined ? { baseIndexBytes } : {}),
    chain: usesBase ? chain.slice(1) : chain,
  };
}

/** A chain error, with the version where the walk found it (to advise an older version). */
class ChainError extends CorruptCheckpointError {
  constructor(
    readonly at: number,
    msg: string,
  ) {
    super(msg);
  }
}

/**
 * The metadata from `want` back through parent links to a full version or the base, oldest
 * first. Each parent must be committed and older than its child, so the walk ends.
 */
async function walkChain(store: CheckpointStore, want: number, committed: number[], base: number): Promise<VersionMeta[]> {
  const have = new Set(committed);
  const vm = `VM "${store.vmId}"`;
  const chain: VersionMeta[] = [];
  let v = want;
  for (;;) {
    const meta = await store.meta(v);
    if (!meta) throw new ChainError(v, `broken delta chain of ${vm}: metadata of version ${v} is missing`);
    if (meta.version !== v) throw new ChainError(v, `broken delta chain of ${vm}: the metadata of version ${v} says it is version ${meta.version}`);
    chain.unshift(meta);
    if (v === base) break; // the base image holds version `base` whole
    if (meta.parent === 0) break;
    if (meta.parent >= v) {
      throw new ChainError(
        v,
        `broken delta chain of ${vm}: version ${v} names version ${meta.parent} as its parent, which is not older ` +
          '(a cycle or a rewritten link)',
      );
    }
    if (!have.has(meta.parent)) {
      throw new ChainError(v, `broken delta chain: version ${v} applies to version ${meta.parent}, which is not in the store (${vm})`);
    }
    v = meta.parent;
  }
  return chain;
}

/** What to do about a broken chain: the newest older version whose chain holds, if any. */
async function adviseOlder(store: CheckpointStore, e: CorruptCheckpointError, committed: number[], base: number): Promise<string> {
  const below = e instanceof ChainError ? e.at : Infinity;
  const candidates = committed.filter((c) => c < below).reverse().slice(0, 32);
  for (const c of candidates) {
    try {
      await walkChain(store, c, committed, base);
      return `An older version's chain is intact: \`migsafe recover --vm ${store.vmId} --version ${c}\``;
    } catch {
      /* try the next older one */
    }
  }
  return `No older version has an intact chain: delete the VM's checkpoints (\`migsafe delete --vm ${store.vmId}\`) and take new ones`;
}

interface ListRead {
  list: ChunkList;
  where: string;
  bind: Omit<FrameBinding, 'index'>;
  expect: number;
  /** Page records the list must hold in all (a version's metadata); undefined for the base. */
  pages?: number;
  /** Its stripes (a stored descriptor), when it is spread over a cluster. */
  stripes?: string;
}

/** Builds the RAM image of a plan. Throws CorruptCheckpointError on anything that does not add up. */
export async function loadImage(
  store: CheckpointStore,
  plan: RestorePlan,
  onProgress?: (p: LoadProgress) => void | Promise<void>,
): Promise<LoadedImage> {
  const vm = store.vmId;
  const ramPages = plan.vm.ramBytes / 4096;
  const lists: ListRead[] = [];
  if (plan.base) {
    lists.push({
      list: 'base',
      where: `VM "${vm}" base image (version ${plan.base})`,
      bind: { vm, version: plan.base, list: 'base' },
      expect: plan.baseChunks,
      ...(plan.baseStripes ? { stripes: plan.baseStripes } : {}),
    });
  }
  for (const m of plan.chain) {
    lists.push({
      list: m.version,
      where: `VM "${vm}" version ${m.version}`,
      bind: { vm, version: m.version, list: 'version' },
      expect: m.chunks,
      pages: m.pages,
      ...(m.stripes ? { stripes: m.stripes } : {}),
    });
  }
  let lengths: number[][];
  try {
    lengths = await Promise.all(lists.map((l) => store.chunkLengths(l.list, l.stripes)));
  } catch (e) {
    throw new CorruptCheckpointError((e as Error).message); // a malformed stripe descriptor
  }
  lists.forEach((l, i) => {
    const got = lengths[i]!;
    const sum = got.reduce((a, b) => a + b, 0);
    if (sum !== l.expect) throw new CorruptCheckpointError(`${l.where}: ${sum} chunks in the store, its metadata says ${l.expect}`);
    got.forEach((len, s) => {
      if (len !== stripeShare(s, got.length, l.expect)) {
        throw new CorruptCheckpointError(`${l.where}: stripe ${s} of ${got.length} holds ${len} chunks, it should hold ${stripeShare(s, got.length, l.expect)}`);
      }
    });
  });
  const total = lists.reduce((a, l) => a + l.expect, 0);
  for (const l of lists) {
    if (l.expect === 0 && l.pages) throw new CorruptCheckpointError(`${l.where}: no frames, its metadata says ${l.pages} page records`);
  }

  // The device state first: small, and a missing one makes reading the pages pointless.
  const target = plan.target;
  const devWhere = `VM "${vm}" version ${target.version}, device state`;
  const dev = await store.deviceState(target.version);
  if (!dev) throw new CorruptCheckpointError(`${devWhere} is missing`);
  const device = await decodeFrame(dev, { kind: 'device', bind: { vm, version: target.version, list: 'device', index: 0 }, rawBytes: target.deviceStateBytes }, devWhere);

  const image = Buffer.alloc(plan.vm.ramBytes);
  let done = 0;
  let pagesApplied = 0;
  // Pipelined: while one slice of frames is applied (in store order: later versions overwrite
  // earlier ones), the next slice is read from Redis and its frames are decompressed and
  // checked on the addon's worker threads. Errors are taken in frame order all the same.
  const SLICE = 16;
  const slices: { l: ListRead; at: number; last: number; closes: boolean }[] = [];
  for (const l of lists) {
    for (let at = 0; at < l.expect; at += SLICE) {
      const last = Math.min(at + SLICE, l.expect) - 1;
      slices.push({ l, at, last, closes: last === l.expect - 1 });
    }
  }
  type Settled<T> = { ok: true; v: T } | { ok: false; e: unknown };
  const settle = <T>(p: Promise<T>): Promise<Settled<T>> => p.then((v) => ({ ok: true as const, v }), (e: unknown) => ({ ok: false as const, e }));
  const start = (i: number) => {
    const { l, at, last } = slices[i]!;
    return settle(
      store.chunkRange(l.list, at, last, l.stripes).then((frames) => {
        if (frames.length !== last - at + 1) {
          throw new CorruptCheckpointError(
            `${l.where}: the store returned ${frames.length} of frames ${at}..${last} (the list shrank while it was read)`,
          );
        }
        return frames.map((f, j) => {
          const where = `${l.where}, chunk ${at + j}`;
          return settle(decodeFrame(f, { kind: 'pages', bind: { ...l.bind, index: at + j }, maxRecords: ramPages }, where).then((frame) => ({ frame, where })));
        });
      }),
    );
  };
  let records = 0;
  let next = slices.length ? start(0) : undefined;
  for (let i = 0; i < slices.length; i++) {
    const read = await next!;
    next = i + 1 < slices.length ? start(i + 1) : undefined;
    if (!read.ok) throw read.e;
    for (const decoding of read.v) {
      const d = await decoding;
      if (!d.ok) throw d.e;
      const { frame, where } = d.v;
      let applied: number;
      try {
        applied = applyBatch(image, frame.raw).records;
      } catch (e) {
        throw new CorruptCheckpointError(`${where}: ${(e as Error).message}`);
      }
      if (applied !== frame.count) throw new CorruptCheckpointError(`${where}: ${applied} page records, its header says ${frame.count}`);
      records += applied;
      await onProgress?.({ done: ++done, total });
    }
    const { l, closes } = slices[i]!;
    if (closes) {
      if (l.pages !== undefined && records !== l.pages) {
        throw new CorruptCheckpointError(`${l.where}: ${records} page records in its frames, its metadata says ${l.pages}`);
      }
      pagesApplied += records;
      records = 0;
    }
  }
  return { plan, image, deviceState: device.raw, pagesApplied };
}

export interface LoadVersionHooks {
  /** Called once the plan is known, before anything is read (again if the read starts over). */
  onPlan?: (plan: RestorePlan) => void;
  onProgress?: (p: LoadProgress) => void | Promise<void>;
  /** The read is starting over: the store changed under it (compaction); `why` is what it found. */
  onRetry?: (why: Error, attempt: number) => void;
}

/**
 * planRestore + loadImage: a version's whole, checked image (default: the newest version).
 * A read that fails because compaction changed the store meanwhile (the base moved, or a
 * version of its chain was dropped) is planned and read again, up to MAX_ATTEMPTS times.
 */
export async function loadVersion(
  store: CheckpointStore,
  version?: number,
  hooks: LoadVersionHooks = {},
): Promise<LoadedImage & { version: number }> {
  for (let attempt = 1; ; attempt++) {
    const snap = await store.snapshot();
    let plan: RestorePlan | undefined;
    try {
      plan = await planRestore(store, version, snap);
      hooks.onPlan?.(plan);
      const loaded = await loadImage(store, plan, hooks.onProgress);
      return { ...loaded, version: plan.target.version };
    } catch (e) {
      if (!(e instanceof CorruptCheckpointError || e instanceof MissingCheckpointError)) throw e;
      if (!(await storeMoved(store, snap, plan))) throw e;
      if (attempt >= MAX_ATTEMPTS) {
        throw new CorruptCheckpointError(
          `VM "${store.vmId}": the store changed under ${attempt} reads in a row (compaction?); last: ${e.message}. Try again`,
        );
      }
      hooks.onRetry?.(e, attempt);
    }
  }
}

/** Whether what a failed read planned with is no longer the store's state. */
async function storeMoved(store: CheckpointStore, snap: StoreSnapshot, plan?: RestorePlan): Promise<boolean> {
  const now = await store.snapshot();
  if (now.base !== snap.base) return true;
  const have = new Set(now.committed);
  const used = plan ? [plan.base, ...plan.chain.map((m) => m.version)].filter((v) => v !== 0) : snap.committed;
  return used.some((v) => !have.has(v));
}
