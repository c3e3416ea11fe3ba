// Writing versions into a real store the way the engine does, for tests of the reader.
import { native } from '../../src/kernel/native.js';
import type { CheckpointStore, PendingVersion } from '../../src/store/checkpoint-store.js';
import type { CodecChoice } from '../../src/store/frame.js';

/** A guest that writes a few random bytes into a few random pages. */
export function mutate(ram: Buffer, pages: number, bytesPerPage: number): void {
  const total = ram.length / 4096;
  for (let i = 0; i < pages; i++) {
    const p = Math.floor(Math.random() * total);
    for (let j = 0; j < bytesPerPage; j++) ram[p * 4096 + Math.floor(Math.random() * 4096)] = Math.floor(Math.random() * 256);
  }
}

export const deviceOf = (version: number) => Buffer.from(`device state for ${version}`);

/**
 * Writes and commits one version of `ram` against `shadow` (updated), `perFrame` pages to a
 * frame. `beforeCommit` sees the version number first (a racing reader may see it committed
 * before this resolves).
 */
export async function writeVersion(
  store: CheckpointStore,
  ram: Buffer,
  shadow: Buffer,
  parent: number,
  codec: CodecChoice,
  opts: { perFrame?: number; beforeCommit?: (version: number) => void } = {},
) {
  const n = native();
  const pending = await store.begin(parent);
  const all = n.scanDirty(ram, shadow);
  const per = opts.perFrame ?? 64;
  let pages = 0;
  for (let at = 0; at < all.length; at += per) pages += await pending.addPages(n.encodeBatch(ram, shadow, all.subarray(at, at + per)), codec);
  return finish(pending, codec, pages, 0, opts.beforeCommit);
}

/** The device state and the commit of a version whose stages stored these many page records. */
async function finish(pending: PendingVersion, codec: CodecChoice, stage1Pages: number, stage2Pages: number, beforeCommit?: (version: number) => void) {
  const pages = stage1Pages + stage2Pages;
  const device = deviceOf(pending.version);
  await pending.setDevice(device, codec);
  beforeCommit?.(pending.version);
  return pending.commit({
    pages,
    bytesRaw: pages * 4096,
    pauseMs: 1,
    deviceStateBytes: device.length,
    dirtySource: 'scan',
    codec: `${codec.codec}:${codec.level}`,
    stage1Pages,
    stage2Pages,
  });
}

/**
 * One version written in two stages, as the engine's rounds write it: `mutated` pages changed
 * before each stage, the paused stage in frames of its own (some pages twice in the version).
 */
export async function writeTwoStages(store: CheckpointStore, ram: Buffer, shadow: Buffer, parent: number, codec: CodecChoice, mutated: number) {
  const n = native();
  const pending = await store.begin(parent);
  const staged = [0, 0];
  for (let stage = 0; stage < 2; stage++) {
    mutate(ram, mutated, 6);
    const dirty = n.scanDirty(ram, shadow);
    for (let at = 0; at < dirty.length; at += 8) staged[stage] += await pending.addPages(n.encodeBatch(ram, shadow, dirty.subarray(at, at + 8)), codec);
  }
  return finish(pending, codec, staged[0]!, staged[1]!);
}
