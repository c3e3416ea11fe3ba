// One VM's page frames spread over every primary of a real 3-primary Redis Cluster (stripes.ts):
// versions and base images land on all three, fold back into the exact image, a stripe short
// of a frame or holding another's frame is refused, a slot moved while a version is written
// changes nothing, and cleanup, compaction, gc and delete leave no stripe behind. Lazy recovery
// reads the striped lists, with their page indexes.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import { compact } from '../../src/store/compaction.js';
import { FaultFetcher, loadIndexes } from '../../src/store/lazy-fetch.js';
import { listsOf, loadNewestFirst } from '../../src/store/lazy-image.js';
import { collectGarbage, findGarbage, keysByVm } from '../../src/store/fleet.js';
import { CorruptCheckpointError, parseCodec } from '../../src/store/frame.js';
import { vmKeys } from '../../src/store/keys.js';
import { loadImage, planRestore } from '../../src/store/reader.js';
import { primaries, scanKeys } from '../../src/store/redis-cluster.js';
import { connectRedis } from '../../src/store/redis-server.js';
import { parseStripes, stripeKeys } from '../../src/store/stripes.js';
import { moveSlotOf, nodeOfKey, testCluster } from '../helpers/redis-cluster.js';
import { deviceOf, mutate, writeVersion } from '../helpers/store.js';
import { native } from '../../src/kernel/native.js';

const PAGES = 2048;
const RAM = PAGES * 4096;
const codec = parseCodec('lz4');

/** Stripe keys of VM `vm` on each primary, and their bytes there (MEMORY USAGE). */
async function perNode(redis: Redis, vm: string): Promise<{ keys: number; bytes: number }[]> {
  return Promise.all(
    primaries(redis).map(async (node) => {
      let cursor = '0';
      const keys: string[] = [];
      do {
        const [next, found] = await node.scan(cursor, 'MATCH', `migsafe:{${vm}/*`, 'COUNT', 1000);
        cursor = next;
        keys.push(...found);
      } while (cursor !== '0');
      let bytes = 0;
      for (const k of keys) bytes += Number(await node.call('MEMORY', 'USAGE', k));
      return { keys: keys.length, bytes };
    }),
  );
}

t.test("a VM's frames are striped over every primary and fold back exactly", async (t) => {
  const cluster = await testCluster(t, { primaries: 3 });
  const redis = connectRedis(cluster.url);
  t.teardown(() => redis.disconnect());
  const store = new CheckpointStore(redis, 's1');
  await store.init(['qemu'], RAM);
  const ram = randomBytes(RAM);
  const shadow = Buffer.alloc(RAM);
  const images = new Map<number, Buffer>();
  let head = (await writeVersion(store, ram, shadow, 0, codec)).version;
  images.set(head, Buffer.from(ram));

  const first = (await store.meta(head))!;
  t.ok(first.stripes, 'the full version names its stripes');
  const st = parseStripes(first.stripes!, 'test');
  t.equal(st.tags.length, 3, 'one stripe per primary');
  const owners = await Promise.all(stripeKeys('s1', st).map((k) => nodeOfKey(cluster, k)));
  t.equal(new Set(owners).size, 3, `its stripes are served by three different primaries (${owners.join(', ')})`);
  const nodes = await perNode(redis, 's1');
  t.ok(nodes.every((n) => n.keys >= 1 && n.bytes > RAM / 6), `every primary holds a share of the bytes: ${nodes.map((n) => n.bytes).join(', ')}`);

  // Deltas; then one written while the slot of one of its stripes moves to another primary.
  for (let i = 0; i < 2; i++) {
    mutate(ram, 300, 64);
    head = (await writeVersion(store, ram, shadow, head, codec, { perFrame: 16 })).version;
    images.set(head, Buffer.from(ram));
  }
  // Half of a version's frames written, then the slot of its stripe 0 moves to another
  // primary (its list migrates), then the other half: the writes after it are redirected.
  mutate(ram, 600, 64);
  const moving = await store.begin(head);
  const key = stripeKeys('s1', moving.stripes!)[0]!;
  const dirty = native().scanDirty(ram, shadow);
  const half = Math.floor(dirty.length / 16 / 2) * 16;
  let pages = 0;
  const frames = async (lo: number, hi: number) => {
    for (let at = lo; at < hi; at += 16) pages += await moving.addPages(native().encodeBatch(ram, shadow, dirty.subarray(at, Math.min(at + 16, hi))), codec);
  };
  await frames(0, half);
  await Promise.all((moving as unknown as { inflight: Promise<unknown>[] }).inflight);
  const from = await nodeOfKey(cluster, key);
  const to = cluster.nodes.find((n) => n.port !== from)!.port;
  t.ok((await moveSlotOf(cluster, key, to)) >= 1, 'the stripe moved with its frames');
  await frames(half, dirty.length);
  await moving.setDevice(deviceOf(moving.version), codec);
  head = (
    await moving.commit({ pages, bytesRaw: pages * 4096, pauseMs: 1, deviceStateBytes: deviceOf(moving.version).length, dirtySource: 'scan', codec: 'lz4:1', stage1Pages: pages, stage2Pages: 0 })
  ).version;
  images.set(head, Buffer.from(ram));
  t.equal(await nodeOfKey(cluster, key), to, 'the stripe is served by the other primary now');
  const img = await loadImage(store, await planRestore(store));
  t.ok(img.image.equals(images.get(head)!), `the head (version ${head}) restores the exact image`);

  // A stripe a frame short, then a frame in another stripe's place: refused, nothing restored.
  const headStripes = stripeKeys('s1', parseStripes((await store.meta(head))!.stripes!, 'test'));
  const popped = (await redis.rpopBuffer(headStripes[1]!))!;
  await t.rejects(loadImage(store, await planRestore(store)), CorruptCheckpointError, 'a stripe short of a frame is refused');
  await redis.rpush(headStripes[1]!, popped);
  const a = (await redis.lindexBuffer(headStripes[0]!, 0))!;
  const b = (await redis.lindexBuffer(headStripes[1]!, 0))!;
  await redis.lset(headStripes[0]!, 0, b);
  await t.rejects(loadImage(store, await planRestore(store)), /foreign frame/, "a frame in another stripe's place is refused");
  await redis.lset(headStripes[0]!, 0, a);
  t.ok((await loadImage(store, await planRestore(store))).image.equals(images.get(head)!), 'put back, it restores again');

  // Compaction: the base is striped too; the folded versions' stripes go.
  const folded = await store.committed();
  await compact(store, head, codec);
  const plan = await planRestore(store);
  t.ok(plan.baseStripes, 'the base image names its stripes');
  t.ok((await loadImage(store, plan)).image.equals(images.get(head)!), 'the base restores the exact image');
  const left = await scanKeys(redis, 'migsafe:{s1/*');
  t.same(
    left.filter((k) => !k.includes(`/${parseStripes(plan.baseStripes!, 't').name}/`)),
    [],
    `only the base's stripes are left (versions ${folded.join(', ')} folded)`,
  );
  mutate(ram, 100, 32);
  const after = await writeVersion(store, ram, shadow, head, codec);
  images.set(after.version, Buffer.from(ram));
  await compact(store, after.version, codec);
  const plan2 = await planRestore(store);
  t.not(plan2.baseStripes, plan.baseStripes, 'a new base has new stripes');
  t.equal((await scanKeys(redis, `migsafe:{s1/${parseStripes(plan.baseStripes!, 't').name}/*`)).length, 0, "the old base's stripes are gone");
  t.ok((await loadImage(store, plan2)).image.equals(ram), 'and the new base restores');

  // A writer that died mid-version: cleanup and gc find its stripes; delete leaves nothing.
  mutate(ram, 400, 16);
  const pending = await store.begin(after.version);
  const n = native();
  const left2 = n.scanDirty(ram, shadow);
  for (let at = 0; at < left2.length; at += 32) await pending.addPages(n.encodeBatch(ram, shadow, left2.subarray(at, at + 32)), codec);
  await Promise.all((pending as unknown as { inflight: Promise<unknown>[] }).inflight);
  const orphan = stripeKeys('s1', pending.stripes!);
  t.ok((await Promise.all(orphan.map((k) => redis.exists(k)))).some((x) => x === 1), 'the dead writer left stripes');
  const g = await findGarbage(redis, 's1', (await keysByVm(redis)).get('s1')!);
  const found = g.keys.map((x) => x.key);
  const written = [];
  for (const k of orphan) if (await redis.exists(k)) written.push(k);
  t.same(found.filter((k) => orphan.includes(k)).sort(), written.sort(), 'gc finds every stripe the pending version wrote');
  t.notOk(found.some((k) => k.includes(`/${parseStripes(plan2.baseStripes!, 't').name}/`)), "gc leaves the base's stripes alone");
  t.ok((await collectGarbage(redis, g)) > 0, 'gc removes them');
  t.equal((await Promise.all(orphan.map((k) => redis.exists(k)))).reduce((x, y) => x + y, 0), 0, 'no stripe of the dead version is left');
  t.ok((await loadImage(store, await planRestore(store))).image.equals(images.get(after.version)!), 'the store still restores');
  // The same left by a writer whose successor starts: cleanupPending finds the stripes from the version's record.
  const again = await store.begin(after.version);
  for (let at = 0; at < left2.length; at += 32) await again.addPages(n.encodeBatch(ram, Buffer.alloc(RAM), left2.subarray(at, at + 32)), codec);
  await Promise.all((again as unknown as { inflight: Promise<unknown>[] }).inflight);
  const again2 = stripeKeys('s1', again.stripes!);
  t.ok((await Promise.all(again2.map((k) => redis.exists(k)))).some((x) => x === 1), 'another dead writer left stripes');
  t.same(await store.cleanupPending(), [again.version]);
  t.equal((await Promise.all(again2.map((k) => redis.exists(k)))).reduce((x, y) => x + y, 0), 0, 'cleanupPending removed its stripes');
  await store.deleteAll();
  t.equal((await scanKeys(redis, 'migsafe:{s1*')).length, 0, 'delete removes every key, stripes included');
  t.equal(await redis.exists(vmKeys('s1').vm), 0);
});

t.test('lazy recovery reads striped lists: the background read and the fault path build the exact image', async (t) => {
  const cluster = await testCluster(t, { primaries: 3 });
  const redis = connectRedis(cluster.url);
  t.teardown(() => redis.disconnect());
  const store = new CheckpointStore(redis, 'lz');
  await store.init(['qemu'], RAM);
  const ram = randomBytes(RAM);
  ram.fill(0, 0, 64 * 4096);
  const shadow = Buffer.alloc(RAM);
  let head = (await writeVersion(store, ram, shadow, 0, codec, { perFrame: 32 })).version;
  for (let i = 0; i < 2; i++) {
    mutate(ram, 300, 64);
    head = (await writeVersion(store, ram, shadow, head, codec, { perFrame: 16 })).version;
  }
  await compact(store, head, codec);
  for (let i = 0; i < 2; i++) {
    mutate(ram, 300, 64);
    head = (await writeVersion(store, ram, shadow, head, codec, { perFrame: 16 })).version;
  }
  const plan = await planRestore(store);
  t.ok(plan.baseStripes && plan.chain.length === 2 && plan.chain.every((m) => m.stripes), 'a striped base and two striped versions on top');
  const lists = await listsOf(store, plan);
  const indexed = await loadIndexes(store, plan, lists);
  t.ok('indexes' in indexed, `their page indexes are read (${'why' in indexed ? indexed.why : 'used'})`);
  if (!('indexes' in indexed)) return;

  // The background read alone, as without indexes.
  const alone = Buffer.alloc(RAM);
  await loadNewestFirst(store, plan, alone, { onReady: () => {} });
  t.ok(alone.equals(ram), 'the background read of the striped lists: the exact image');

  // Faults beside the background read, on a connection of their own.
  const image = Buffer.alloc(RAM);
  const final = new Uint8Array(PAGES);
  const seen = new Uint8Array(PAGES);
  const errors: Error[] = [];
  const dup = store.duplicate();
  t.teardown(() => dup.close());
  const onReady = (pages: number[]) => pages.forEach((p) => seen[p]!++);
  const f = new FaultFetcher({ store: dup, lists, indexes: indexed.indexes, image, final, onReady, onError: (e) => errors.push(e) });
  onReady(f.placeZeroPages());
  f.want(PAGES - 1);
  await f.busy();
  t.ok(final[PAGES - 1] && image.subarray((PAGES - 1) * 4096).equals(ram.subarray((PAGES - 1) * 4096)), 'a fault on the last page is served from its stripes before the read gets there');
  await loadNewestFirst(store, plan, image, {
    onReady,
    onProgress: ({ done }) => f.want((done * 97) % PAGES),
    indexed: { indexes: indexed.indexes, final },
    pause: () => f.busy(),
  });
  for (let b = f.busy(); b; b = f.busy()) await b;
  t.same(errors, []);
  t.ok(f.stats.frames > 0, `${f.stats.frames} frames fetched for ${f.stats.faults} faults`);
  t.ok(image.equals(ram), 'faults and the background read together: the exact image');
  t.same([...new Set(seen)], [1], 'every page announced exactly once');
});
