// Folding committed versions into one RAM image: base, then each delta version in order.
// Everything is checked (chain, frame, per-page CRC) before anything leaves this module.
import { applyBatch } from '../kernel/page-delta.js';
import type { ChunkList, CheckpointStore, VmRecord } from './checkpoint-store.js';
import { CorruptCheckpointError, decodeFrame } from './frame.js';
import type { VersionMeta } from './version-meta.js';

export class MissingCheckpointError extends Error {
  override name = 'MissingCheckpointError';
}

export interface RestorePlan {
  vm: VmRecord;
  target: VersionMeta;
  /** Start from the compacted base image of this version (0 = from a zero image). */
  base: number;
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

/** Works out which stored data make up `version` (default: the newest), or says what is missing. */
export async function planRestore(store: CheckpointStore, version?: number): Promise<RestorePlan> {
  const vm = await store.vm();
  if (!vm) throw new MissingCheckpointError(`no VM "${store.vmId}" in the store: check --vm (see \`migsafe inspect\`)`);
  const committed = await store.committed();
  if (committed.length === 0) throw new MissingCheckpointError(`VM "${store.vmId}" has no committed checkpoint yet`);
  const want = version ?? committed[committed.length - 1]!;
  const have = new Set(committed);
  if (!have.has(want)) {
    throw new MissingCheckpointError(
      `version ${want} of VM "${store.vmId}" is not committed; committed versions: ${committed[0]}..${committed[committed.length - 1]} (${committed.length})`,
    );
  }
  const base = await store.base();
  const chain: VersionMeta[] = [];
  let v = want;
  for (;;) {
    const meta = await store.meta(v);
    if (!meta) throw new CorruptCheckpointError(`broken delta chain: metadata of version ${v} is missing`);
    chain.unshift(meta);
    if (v === base) break; // the base image holds version `base` whole
    if (meta.parent === 0) break;
    if (!have.has(meta.parent)) {
      throw new CorruptCheckpointError(
        `broken delta chain: version ${v} applies to version ${meta.parent}, which is not in the store`,
      );
    }
    v = meta.parent;
  }
  const usesBase = chain[0]!.version === base && base !== 0;
  return { vm, target: chain[chain.length - 1]!, base: usesBase ? base : 0, chain: usesBase ? chain.slice(1) : chain };
}

/** Builds the RAM image of a plan. Throws CorruptCheckpointError on anything that does not add up. */
export async function loadImage(
  store: CheckpointStore,
  plan: RestorePlan,
  onProgress?: (p: LoadProgress) => void,
): Promise<LoadedImage> {
  const lists: { list: ChunkList; where: string; expect?: number }[] = [];
  if (plan.base) lists.push({ list: 'base', where: `base image (version ${plan.base})` });
  for (const m of plan.chain) lists.push({ list: m.version, where: `version ${m.version}`, expect: m.chunks });

  const lengths = await Promise.all(lists.map((l) => store.chunkCount(l.list)));
  lists.forEach((l, i) => {
    if (l.expect !== undefined && lengths[i] !== l.expect) {
      throw new CorruptCheckpointError(`${l.where}: ${lengths[i]} chunks in the store, its metadata says ${l.expect}`);
    }
  });
  if (plan.base && lengths[0] === 0) throw new CorruptCheckpointError(`base image (version ${plan.base}) is empty`);
  const total = lengths.reduce((a, b) => a + b, 0);

  const image = Buffer.alloc(plan.vm.ramBytes);
  let done = 0;
  let pagesApplied = 0;
  const SLICE = 16;
  for (const [i, l] of lists.entries()) {
    for (let at = 0; at < lengths[i]!; at += SLICE) {
      const frames = await store.chunkRange(l.list, at, at + SLICE - 1);
      for (const [j, f] of frames.entries()) {
        const where = `${l.where}, chunk ${at + j}`;
        const frame = await decodeFrame(f, 'pages', where);
        try {
          pagesApplied += applyBatch(image, frame.raw).records;
        } catch (e) {
          throw new CorruptCheckpointError(`${where}: ${(e as Error).message}`);
        }
        onProgress?.({ done: ++done, total });
      }
    }
  }
  const dev = await store.deviceState(plan.target.version);
  if (!dev) throw new CorruptCheckpointError(`version ${plan.target.version}: device state is missing`);
  const device = await decodeFrame(dev, 'device', `version ${plan.target.version}, device state`);
  return { plan, image, deviceState: device.raw, pagesApplied };
}

export interface LoadVersionHooks {
  /** Called once the plan is known, before anything is read. */
  onPlan?: (plan: RestorePlan) => void;
  onProgress?: (p: LoadProgress) => void;
}

/** planRestore + loadImage: a version's whole, checked image (default: the newest version). */
export async function loadVersion(
  store: CheckpointStore,
  version?: number,
  hooks: LoadVersionHooks = {},
): Promise<LoadedImage & { version: number }> {
  const plan = await planRestore(store, version);
  hooks.onPlan?.(plan);
  const loaded = await loadImage(store, plan, hooks.onProgress);
  return { ...loaded, version: plan.target.version };
}
