// The Redis store against a real redis-server: atomic commits, the delta chain, refusal of
// corrupt or incomplete data, compaction, and a server killed in the middle of a version.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { native } from '../../src/kernel/native.js';
import { CheckpointStore, ParentMismatchError } from '../../src/store/checkpoint-store.js';
import { parseCodec, CorruptCheckpointError } from '../../src/store/frame.js';
import { loadImage, planRestore, MissingCheckpointError } from '../../src/store/reader.js';
import { compact } from '../../src/store/compaction.js';
import { vmKeys } from '../../src/store/keys.js';
import { startRedisServer, connectRedis } from '../../src/store/redis-server.js';
import { testRedis, testClient } from '../helpers/redis.js';

const PAGES = 256;
const RAM = PAGES * 4096;
const codec = parseCodec('zstd:1');

/** A guest that writes a few random bytes into a few random pages. */
function mutate(ram: Buffer, pages: number, bytesPerPage: number): void {
  for (let i = 0; i < pages; i++) {
    const p = Math.floor(Math.random() * PAGES);
    for (let j = 0; j < bytesPerPage; j++) ram[p * 4096 + Math.floor(Math.random() * 4096)] = Math.floor(Math.random() * 256);
  }
}

/** Writes one version the way the engine does: records vs shadow, a frame per slice, device state. */
async function writeVersion(store: CheckpointStore, ram: Buffer, shadow: Buffer, parent: number, commit = true) {
  const n = native();
  const pending = await store.begin(parent);
  const all = n.scanDirty(ram, shadow);
  let pages = 0;
  for (let at = 0; at < all.length; at += 64) {
    const raw = n.encodeBatch(ram, shadow, all.subarray(at, at + 64));
    pages += await pending.addPages(raw, codec);
  }
  const device = Buffer.from(`device state for ${pending.version}`);
  await pending.setDevice(device, codec);
  if (!commit) return { pending, pages };
  const meta = await pending.commit({
    pages,
    bytesRaw: pages * 4096,
    pauseMs: 1,
    deviceStateBytes: device.length,
    dirtySource: 'scan',
    codec: 'zstd:1',
    stage1Pages: pages,
    stage2Pages: 0,
  });
  return { pending, pages, meta };
}

t.test('versions fold back into the exact image; uncommitted data is never used', async (t) => {
  const srv = await testRedis(t);
  const store = new CheckpointStore(testClient(t, srv.url), 'vm-a');
  await store.init(['qemu-system-x86_64', '-m', '1M'], RAM);
  const ram = randomBytes(RAM);
  ram.fill(0, 0, 64 * 4096); // some zero pages
  const shadow = Buffer.alloc(RAM);
  const images: Buffer[] = [];
  let parent = 0;
  for (let v = 0; v < 5; v++) {
    if (v) mutate(ram, 20, 8);
    const { meta } = await writeVersion(store, ram, shadow, parent);
    parent = meta!.version;
    images.push(Buffer.from(ram));
  }
  t.same(await store.committed(), [1, 2, 3, 4, 5]);
  for (const v of [1, 3, 5]) {
    const img = await loadImage(store, await planRestore(store, v));
    t.ok(img.image.equals(images[v - 1]!), `version ${v} restores the image it was taken of`);
    t.equal(img.deviceState.toString(), `device state for ${v}`);
  }
  // A version written but not committed stays invisible, and cleanup removes it.
  mutate(ram, 10, 100);
  const { pending } = await writeVersion(store, ram, shadow, parent, false);
  t.equal((await planRestore(store)).target.version, 5, 'newest committed is still 5');
  t.same(await store.cleanupPending(), [pending.version]);
  t.equal(await store.chunkCount(pending.version), 0, 'its chunks are gone');
});

t.test('a commit is refused when data is missing or the parent is not the head', async (t) => {
  const srv = await testRedis(t);
  const redis = testClient(t, srv.url);
  const store = new CheckpointStore(redis, 'vm-b');
  await store.init(['q'], RAM);
  const ram = randomBytes(RAM);
  const shadow = Buffer.alloc(RAM);
  const { meta } = await writeVersion(store, ram, shadow, 0);
  mutate(ram, 30, 16);
  const { pending } = await writeVersion(store, ram, shadow, meta!.version, false);
  await redis.rpop(vmKeys('vm-b').chunks(pending.version)); // a chunk lost on the way
  await t.rejects(
    pending.commit({ pages: 1, bytesRaw: 4096, pauseMs: 0, deviceStateBytes: 0, dirtySource: 'scan', codec: 'x', stage1Pages: 0, stage2Pages: 0 }),
    /INCOMPLETE/,
  );
  t.same(await store.committed(), [1], 'nothing new visible');
  const stale = await store.begin(0); // parent 0 is always fine ...
  await stale.abort();
  const wrong = await store.begin(99); // ... a parent that is not the head is not
  await wrong.setDevice(Buffer.from('d'), codec);
  await t.rejects(
    wrong.commit({ pages: 0, bytesRaw: 0, pauseMs: 0, deviceStateBytes: 1, dirtySource: 'scan', codec: 'x', stage1Pages: 0, stage2Pages: 0 }),
    ParentMismatchError,
  );
});

t.test('corrupt, truncated or missing data is refused with what and where', async (t) => {
  const srv = await testRedis(t);
  const redis = testClient(t, srv.url);
  const store = new CheckpointStore(redis, 'vm-c');
  await store.init(['q'], RAM);
  const ram = randomBytes(RAM);
  const shadow = Buffer.alloc(RAM);
  let parent = (await writeVersion(store, ram, shadow, 0)).meta!.version;
  mutate(ram, 40, 10);
  parent = (await writeVersion(store, ram, shadow, parent)).meta!.version;

  await t.rejects(planRestore(new CheckpointStore(redis, 'no-such-vm')), MissingCheckpointError);
  await t.rejects(planRestore(store, 7), /version 7 of VM "vm-c" is not committed/);

  const key = vmKeys('vm-c').chunks(2);
  const good = await redis.lindexBuffer(key, 0);
  // One flipped bit in the compressed payload.
  const flipped = Buffer.from(good!);
  flipped[flipped.length - 3] ^= 0x10;
  await redis.lset(key, 0, flipped);
  await t.rejects(loadImage(store, await planRestore(store)), CorruptCheckpointError);
  await t.rejects(loadImage(store, await planRestore(store)), /version 2, chunk 0/);
  // Truncated.
  await redis.lset(key, 0, good!.subarray(0, good!.length >> 1));
  await t.rejects(loadImage(store, await planRestore(store)), CorruptCheckpointError);
  // A chunk missing entirely.
  await redis.lset(key, 0, good!);
  const last = await redis.rpop(key);
  t.ok(last, 'had a chunk to remove');
  await t.rejects(loadImage(store, await planRestore(store)), /chunks in the store, its metadata says/);
  // A hole in the chain.
  await redis.zrem(vmKeys('vm-c').committed, '1');
  await t.rejects(planRestore(store, 2), /broken delta chain: version 2 applies to version 1/);
  // Version 1 is complete on its own and still readable elsewhere: nothing was changed by refusals.
  t.equal(parent, 2);
});

t.test('compaction keeps every later image and bounds what recovery reads', async (t) => {
  const srv = await testRedis(t);
  const store = new CheckpointStore(testClient(t, srv.url), 'vm-d');
  await store.init(['q'], RAM);
  const ram = randomBytes(RAM);
  const shadow = Buffer.alloc(RAM);
  const images = new Map<number, Buffer>();
  let parent = 0;
  for (let v = 0; v < 8; v++) {
    if (v) mutate(ram, 25, 12);
    parent = (await writeVersion(store, ram, shadow, parent)).meta!.version;
    images.set(parent, Buffer.from(ram));
  }
  const r = await compact(store, 5, codec);
  t.equal(r.base, 5);
  t.same(r.dropped, [1, 2, 3, 4]);
  t.same(await store.committed(), [5, 6, 7, 8]);
  const plan = await planRestore(store);
  t.equal(plan.base, 5);
  t.same(plan.chain.map((m) => m.version), [6, 7, 8], 'reads the base and three versions');
  for (const v of [5, 6, 8]) {
    const img = await loadImage(store, await planRestore(store, v));
    t.ok(img.image.equals(images.get(v)!), `version ${v} intact after compaction`);
  }
  // Writing goes on against the head as before.
  mutate(ram, 5, 5);
  const m = (await writeVersion(store, ram, shadow, parent)).meta!;
  t.ok((await loadImage(store, await planRestore(store, m.version))).image.equals(ram));
});

t.test('redis-server killed in the middle of a version: no half version after restart', async (t) => {
  const srv = await testRedis(t, 'always');
  const redis = connectRedis(srv.url, { retry: true });
  t.teardown(() => redis.disconnect());
  const store = new CheckpointStore(redis, 'vm-e');
  await store.init(['q'], RAM);
  const ram = randomBytes(RAM);
  const shadow = Buffer.alloc(RAM);
  const first = (await writeVersion(store, ram, shadow, 0)).meta!;
  mutate(ram, 50, 50);
  const { pending } = await writeVersion(store, ram, shadow, first.version, false);
  await Promise.all([]);
  process.kill(srv.pid, 'SIGKILL');
  await new Promise((r) => setTimeout(r, 200));
  await t.rejects(
    pending.commit({ pages: 1, bytesRaw: 4096, pauseMs: 0, deviceStateBytes: 0, dirtySource: 'scan', codec: 'x', stage1Pages: 0, stage2Pages: 0 }),
    'the commit cannot happen while the server is down',
  );
  // Same directory, same port: the append-only file brings back what was committed.
  const again = await startRedisServer({ dir: srv.dir, port: Number(srv.url.split(':').pop()) });
  t.teardown(() => again.stop());
  const fresh = testClient(t, again.url);
  const s2 = new CheckpointStore(fresh, 'vm-e');
  t.same(await s2.committed(), [first.version], 'only the committed version is visible');
  const img = await loadImage(s2, await planRestore(s2));
  t.equal(img.plan.target.version, first.version);
  t.same(await s2.cleanupPending(), [pending.version], 'the half-written version is found and removed');
});
