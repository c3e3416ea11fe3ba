// The newest-first reader of lazy recovery on a real redis-server: the image it builds page by
// page is the eager reader's, byte for byte — through deltas, a version holding a page twice
// (its live and paused stages), a compacted base — every page is announced once, and never
// before it is final; a damaged page is named with its version.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { native } from '../../src/kernel/native.js';
import { batchRecords } from '../../src/kernel/page-delta.js';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import { decodeFrame, encodeFrame, parseCodec } from '../../src/store/frame.js';
import { vmKeys } from '../../src/store/keys.js';
import { loadImage, planRestore } from '../../src/store/reader.js';
import { loadNewestFirst } from '../../src/store/lazy-image.js';
import { compact } from '../../src/store/compaction.js';
import { testClient, testRedis } from '../helpers/redis.js';
import { deviceOf, mutate, writeTwoStages, writeVersion } from '../helpers/store.js';

const PAGES = 128;
const RAM = PAGES * 4096;
const codec = parseCodec('lz4');


async function lazyImage(store: CheckpointStore, version?: number) {
  const plan = await planRestore(store, version);
  const image = Buffer.alloc(plan.vm.ramBytes);
  const seen = new Uint8Array(PAGES);
  let early = 0;
  const eager = (await loadImage(store, plan)).image;
  await loadNewestFirst(store, plan, image, {
    onReady: (pages) => {
      for (const p of pages) {
        seen[p]!++;
        // Announced means final: already what the eager reader ends with.
        if (!image.subarray(p * 4096, (p + 1) * 4096).equals(eager.subarray(p * 4096, (p + 1) * 4096))) early++;
      }
    },
  });
  return { image, eager, seen, early, plan };
}

t.test('the same image as the eager reader, each page announced once and final when announced', async (t) => {
  const srv = await testRedis(t);
  const store = new CheckpointStore(testClient(t, srv.url), 'vm-lazy');
  await store.init(['q'], RAM);
  const ram = randomBytes(RAM);
  ram.fill(0, 0, 16 * 4096); // some zero pages, never stored
  const shadow = Buffer.alloc(RAM);
  let parent = (await writeVersion(store, ram, shadow, 0, codec, { perFrame: 16 })).version;
  for (let i = 0; i < 3; i++) parent = (await writeTwoStages(store, ram, shadow, parent, codec, 20)).version;
  for (const v of [1, 2, parent]) {
    const r = await lazyImage(store, v);
    t.ok(r.image.equals(r.eager), `version ${v}: the eager reader's image`);
    t.same([...new Set(r.seen)], [1], `version ${v}: every page announced exactly once`);
    t.equal(r.early, 0, `version ${v}: no page announced before it was final`);
  }
  t.ok((await lazyImage(store)).image.equals(ram), 'the newest version is the RAM as written');

  await compact(store, 3, codec);
  for (let i = 0; i < 2; i++) parent = (await writeTwoStages(store, ram, shadow, parent, codec, 20)).version;
  const r = await lazyImage(store);
  t.ok(r.plan.base > 0, `through the base image (version ${r.plan.base})`);
  t.ok(r.image.equals(ram) && r.image.equals(r.eager), 'base + versions: the RAM as written');
  t.equal(r.early, 0);
});

t.test('a damaged page inside a sound frame is refused, named with its version', async (t) => {
  const srv = await testRedis(t);
  const redis = testClient(t, srv.url);
  const store = new CheckpointStore(redis, 'vm-bad');
  await store.init(['q'], RAM);
  const ram = randomBytes(RAM);
  const shadow = Buffer.alloc(RAM);
  const v = (await writeVersion(store, ram, shadow, 0, codec, { perFrame: 16 })).version;
  const key = vmKeys('vm-bad').chunks(v);
  const bind = { vm: 'vm-bad', version: v, list: 'version' as const, index: 2 };
  const d = await decodeFrame((await redis.lindexBuffer(key, 2))!, { kind: 'pages', bind, maxRecords: PAGES }, 'test');
  const raw = Buffer.from(d.raw);
  const rec = [...batchRecords(raw)][3]!;
  rec.payload[7]! ^= 1;
  await redis.lset(key, 2, await encodeFrame('pages', raw, d.count, codec, bind));
  const plan = await planRestore(store);
  const announced: number[] = [];
  await t.rejects(
    loadNewestFirst(store, plan, Buffer.alloc(RAM), { onReady: (p) => announced.push(...p) }),
    new RegExp(`page ${rec.page} \\(guest address 0x${(rec.page * 4096).toString(16)}\\) of VM "vm-bad" version ${v} \\(chunk 2\\) fails its check`),
  );
  t.notOk(announced.includes(rec.page), 'the damaged page was never announced');
});
