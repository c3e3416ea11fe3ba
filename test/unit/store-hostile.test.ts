// Hostile or broken store contents against a real redis-server: a cyclic chain, a parent newer
// than its child, a frame copied from another VM or version, lengths that would make the reader
// allocate gigabytes, a truncated device state, frames of an older format. Each is refused with
// an error naming what and where, before any frame is applied, and the store is left as it was.
import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { pack, unpack } from 'msgpackr';
import type { Redis } from 'ioredis';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import { CorruptCheckpointError, MAX_DEVICE_STATE_BYTES, encodeFrame, parseCodec } from '../../src/store/frame.js';
import { loadVersion, MissingCheckpointError } from '../../src/store/reader.js';
import { vmKeys } from '../../src/store/keys.js';
import { testClient, testRedis } from '../helpers/redis.js';
import { deviceOf, mutate, writeVersion } from '../helpers/store.js';

const PAGES = 64;
const RAM = PAGES * 4096;
const codec = parseCodec('zstd:1');

/** A store with VM `id` holding versions 1..n (1 full, each next a delta), and their images. */
async function filled(t: Test, redis: Redis, id: string, n: number) {
  const store = new CheckpointStore(redis, id);
  await store.init(['q'], RAM);
  const ram = randomBytes(RAM);
  const shadow = Buffer.alloc(RAM);
  const images = new Map<number, Buffer>();
  let parent = 0;
  for (let i = 0; i < n; i++) {
    if (i) mutate(ram, 12, 8);
    parent = (await writeVersion(store, ram, shadow, parent, codec, { perFrame: 8 })).version;
    images.set(parent, Buffer.from(ram));
  }
  t.equal(images.size, n);
  return { store, images, keys: vmKeys(id) };
}

/** Every key of the store and its value, to show a refusal changed nothing. */
async function dump(redis: Redis): Promise<string> {
  const keys = (await redis.keys('*')).sort();
  const out: string[] = [];
  for (const k of keys) out.push(k, (await redis.dumpBuffer(k))?.toString('hex') ?? '');
  return out.join('\n');
}

/** loadVersion must refuse with `re` before a single frame is applied; the store is unchanged. */
async function refuses(t: Test, redis: Redis, store: CheckpointStore, version: number | undefined, re: RegExp, cls: new (...a: never[]) => Error = CorruptCheckpointError) {
  const before = await dump(redis);
  let applied = 0;
  const err = await loadVersion(store, version, { onProgress: () => void applied++ }).then(
    () => null,
    (e: Error) => e,
  );
  t.ok(err instanceof cls, `refused with ${cls.name}: ${err?.message}`);
  t.match(err?.message, re);
  t.equal(await dump(redis), before, 'the store is unchanged');
  return { applied, err };
}

t.test('a cyclic chain and a parent not older than its child are refused, with an older intact version to recover', async (t) => {
  const srv = await testRedis(t);
  const redis = testClient(t, srv.url);
  const { store, images, keys } = await filled(t, redis, 'vm-cyc', 5);
  // 4 → 3 → 4 → ...: a loop that used to spin forever.
  await redis.hset(keys.version(3), 'parent', '4');
  const cyc = await refuses(t, redis, store, 4, /VM "vm-cyc": version 3 names version 4 as its parent, which is not older \(a cycle/);
  t.equal(cyc.applied, 0, 'nothing applied');
  t.match(cyc.err?.message, /`migsafe recover --vm vm-cyc --version 2`/, 'names an older intact version');
  t.ok((await loadVersion(store, 2)).image.equals(images.get(2)!), 'which is indeed intact');
  // A version that is its own parent.
  await redis.hset(keys.version(3), 'parent', '3');
  await refuses(t, redis, store, 3, /version 3 names version 3 as its parent, which is not older/);
  // No loop, but a parent newer than its child: 2 → 5 (5 made full).
  await redis.hset(keys.version(3), 'parent', '2');
  await redis.hset(keys.version(5), 'parent', '0');
  await redis.hset(keys.version(2), 'parent', '5');
  const newer = await refuses(t, redis, store, 3, /version 2 names version 5 as its parent, which is not older/);
  t.match(newer.err?.message, /--version 1`/, 'version 1 (full) is the newest intact one below');
  // With nothing intact below, the advice is to delete.
  await redis.hset(keys.version(1), 'parent', '1');
  await refuses(t, redis, store, 1, /No older version has an intact chain: delete the VM's checkpoints \(`migsafe delete --vm vm-cyc`\)/);
});

t.test('a frame from another VM, another version or another place is refused', async (t) => {
  const srv = await testRedis(t);
  const redis = testClient(t, srv.url);
  const a = await filled(t, redis, 'vm-a', 3);
  const b = await filled(t, redis, 'vm-b', 3);
  const ka = a.keys.chunks(2);
  const mine = (await redis.lindexBuffer(ka, 0))!;
  t.ok((await redis.llen(ka)) >= 2, 'version 2 has two frames or more');

  // vm-b's version 2, frame 0: valid, same version number, same size of RAM.
  await redis.lset(ka, 0, (await redis.lindexBuffer(b.keys.chunks(2), 0))!);
  await refuses(t, redis, a.store, 3, /VM "vm-a" version 2, chunk 0: foreign frame: it belongs to VM "vm-b" version 2 version frame 0/);
  // vm-a's own version 1, frame 0.
  await redis.lset(ka, 0, (await redis.lindexBuffer(a.keys.chunks(1), 0))!);
  await refuses(t, redis, a.store, 3, /foreign frame: it belongs to VM "vm-a" version 1 version frame 0, not to VM "vm-a" version 2 version frame 0/);
  // Two frames of one version swapped.
  const second = (await redis.lindexBuffer(ka, 1))!;
  await redis.lset(ka, 0, second);
  await redis.lset(ka, 1, mine);
  await refuses(t, redis, a.store, 3, /chunk 0: foreign frame: it belongs to VM "vm-a" version 2 version frame 1/);
  await redis.lset(ka, 0, mine);
  await redis.lset(ka, 1, second);
  // A header rewritten to claim it belongs here: the checksum covers the binding.
  const forged = unpack((await redis.lindexBuffer(b.keys.chunks(2), 0))!) as Record<string, unknown>;
  forged.m = 'vm-a';
  await redis.lset(ka, 0, pack(forged));
  await refuses(t, redis, a.store, 3, /VM "vm-a" version 2, chunk 0: checksum mismatch/);
  await redis.lset(ka, 0, mine);
  // A device state from the other VM.
  await redis.set(a.keys.device(3), (await redis.getBuffer(b.keys.device(3)))!);
  await refuses(t, redis, a.store, 3, /version 3, device state: foreign frame: it belongs to VM "vm-b"/);
  await redis.set(a.keys.device(3), (await a.store.deviceState(2))!);
  await refuses(t, redis, a.store, 3, /device state: foreign frame: it belongs to VM "vm-a" version 2 device frame 0/);
  // Put back, vm-a reads whole again.
  await redis.set(a.keys.device(3), (await encodeFrame('device', deviceOf(3), 0, codec, { vm: 'vm-a', version: 3, list: 'device', index: 0 })));
  const ok = await loadVersion(a.store, 3);
  t.ok(ok.image.equals(a.images.get(3)!), 'and the real frames still restore the image');
  t.equal(ok.deviceState.toString(), 'device state for 3');
});

t.test('lengths are bounded before anything is allocated', async (t) => {
  const srv = await testRedis(t);
  const redis = testClient(t, srv.url);
  const { store, keys } = await filled(t, redis, 'vm-len', 2);
  const key = keys.chunks(2);
  const good = (await redis.lindexBuffer(key, 0))!;
  const edit = async (change: Record<string, unknown>) => {
    await redis.lset(key, 0, pack({ ...(unpack(good) as object), ...change }));
  };
  // A raw length of almost 4 GiB claimed by a frame of one record.
  await edit({ r: 2 ** 32 - 1, n: 1 });
  await refuses(t, redis, store, 2, /version 2, chunk 0: header says 4294967295 raw bytes, more than 1 records can hold \(4112\)/);
  // More records than the VM has pages.
  await edit({ r: 2 ** 30, n: 2 ** 18 });
  await refuses(t, redis, store, 2, /header says 262144 page records, more than the VM's 64 pages/);
  await edit({ r: -1 });
  await refuses(t, redis, store, 2, /malformed frame header/);
  await redis.lset(key, 0, good);
  // A device state over the cap, and a metadata length the reader would trust otherwise.
  const dev = (await redis.getBuffer(keys.device(2)))!;
  await redis.set(keys.device(2), pack({ ...(unpack(dev) as object), r: MAX_DEVICE_STATE_BYTES + 1 }));
  await refuses(t, redis, store, 2, /version 2, device state: header says 268435457 bytes, more than the device state cap of 256 MiB/);
  await redis.set(keys.device(2), dev);
  // A chunk count in the metadata that the list does not have.
  await redis.hset(keys.version(2), 'chunks', String(2 ** 40));
  await refuses(t, redis, store, 2, /version 2: \d+ chunks in the store, its metadata says 1099511627776/);
  await redis.hset(keys.version(2), 'chunks', 'NaN');
  await refuses(t, redis, store, 2, /metadata field chunks is missing or not a number/, Error);
  // A VM record that claims an absurd RAM size.
  await redis.hset(keys.vm, 'ramBytes', String(2 ** 52));
  await refuses(t, redis, store, 2, /VM "vm-len": its record in the store is malformed \(ramBytes "4503599627370496"/, Error);
});

t.test('a truncated device state is refused', async (t) => {
  const srv = await testRedis(t);
  const redis = testClient(t, srv.url);
  const { store, keys } = await filled(t, redis, 'vm-dev', 2);
  const dev = (await redis.getBuffer(keys.device(2)))!;
  // Bytes cut off the stored frame.
  await redis.set(keys.device(2), dev.subarray(0, dev.length - 5));
  await refuses(t, redis, store, 2, /VM "vm-dev" version 2, device state: not a migsafe frame/);
  // A well-formed frame of a shorter device state (its checksum right, its binding right).
  const short = deviceOf(2).subarray(0, 7);
  await redis.set(keys.device(2), await encodeFrame('device', short, 0, codec, { vm: 'vm-dev', version: 2, list: 'device', index: 0 }));
  await refuses(t, redis, store, 2, /device state: header says 7 bytes, the version's metadata says 18 \(truncated or replaced\)/);
  // Missing.
  await redis.del(keys.device(2));
  await refuses(t, redis, store, 2, /version 2, device state is missing/);
});

t.test('a store written by an older migsafe is refused with what to do', async (t) => {
  const srv = await testRedis(t);
  const redis = testClient(t, srv.url);
  const { store, keys } = await filled(t, redis, 'vm-old', 1);
  const good = (await redis.lindexBuffer(keys.chunks(1), 0))!;
  const old = unpack(good) as Record<string, unknown>;
  for (const k of ['m', 'v', 'l', 'i']) delete old[k];
  await redis.lset(keys.chunks(1), 0, pack({ ...old, f: 1 }));
  await refuses(t, redis, store, 1, /chunk 0: frame format 1 was written by an older migsafe .*`migsafe delete --vm vm-old`/);
  await redis.lset(keys.chunks(1), 0, good);
  await redis.hset(keys.vm, 'format', '1');
  await refuses(t, redis, store, 1, /VM "vm-old" was stored by an older migsafe \(store format 1, this one reads format 2/, Error);
  await t.rejects(store.init(['q'], RAM), /stored by an older migsafe .*`migsafe delete --vm vm-old`/, 'a writer refuses to add to it');
  t.ok(await store.exists(), 'while `delete` can still find it');
});

t.test('a version folded into the base meanwhile says so', async (t) => {
  const srv = await testRedis(t);
  const redis = testClient(t, srv.url);
  const { store, keys } = await filled(t, redis, 'vm-fold', 3);
  await redis.set(keys.base, '2');
  await redis.zrem(keys.committed, '1');
  await refuses(t, redis, store, 1, /version 1 of VM "vm-fold" was folded into the base image \(version 2\) by compaction: recover version 2 or a later one/, MissingCheckpointError);
  // A base without its frame count (not written by compaction).
  await refuses(t, redis, store, 3, /the base image \(version 2\) has no frame count in its metadata/);
});
