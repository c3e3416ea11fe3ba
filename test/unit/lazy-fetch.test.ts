// The page indexes of lazy recovery on a real redis-server: written at commit and compaction,
// the fault path (lazy-fetch.ts) builds a page from just the frames holding it — the eager
// reader's bytes, alone or beside the background read — and a store without an index (older
// migsafe), or with a missing, corrupt, truncated or foreign one, is read without it. A frame
// the index misdescribes, and a damaged page, are never served.
import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { native } from '../../src/kernel/native.js';
import { batchPages, batchRecords } from '../../src/kernel/page-delta.js';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import { compact } from '../../src/store/compaction.js';
import { findGarbage, keysByVm } from '../../src/store/fleet.js';
import { decodeFrame, encodeFrame, parseCodec } from '../../src/store/frame.js';
import { vmKeys } from '../../src/store/keys.js';
import { FaultFetcher, loadIndexes } from '../../src/store/lazy-fetch.js';
import { listsOf, loadNewestFirst } from '../../src/store/lazy-image.js';
import { PageIndexBuilder } from '../../src/store/page-index.js';
import { loadImage, planRestore } from '../../src/store/reader.js';
import { testClient, testRedis } from '../helpers/redis.js';
import { deviceOf, mutate, writeTwoStages, writeVersion } from '../helpers/store.js';

const PAGES = 256;
const RAM = PAGES * 4096;
const codec = parseCodec('lz4');
const pageOf = (b: Buffer, p: number) => b.subarray(p * 4096, (p + 1) * 4096);


/** A store of a base image and versions on top, some pages zero (never stored). */
async function history(store: CheckpointStore) {
  await store.init(['q'], RAM);
  const ram = randomBytes(RAM);
  ram.fill(0, 0, 16 * 4096);
  const shadow = Buffer.alloc(RAM);
  let head = (await writeVersion(store, ram, shadow, 0, codec, { perFrame: 16 })).version;
  for (let i = 0; i < 3; i++) head = (await writeTwoStages(store, ram, shadow, head, codec, 30)).version;
  await compact(store, 3, codec);
  for (let i = 0; i < 2; i++) head = (await writeTwoStages(store, ram, shadow, head, codec, 30)).version;
  return { ram, head };
}

/** A fault fetcher over the newest version, with what it announced. */
async function fetcherOf(t: Test, store: CheckpointStore) {
  const plan = await planRestore(store);
  const lists = await listsOf(store, plan);
  const indexed = await loadIndexes(store, plan, lists);
  if (!('indexes' in indexed)) throw new Error(`no indexes: ${indexed.why}`);
  const image = Buffer.alloc(RAM);
  const final = new Uint8Array(PAGES);
  const seen = new Uint8Array(PAGES);
  const errors: Error[] = [];
  const eager = (await loadImage(store, plan)).image;
  let early = 0;
  const dup = store.duplicate();
  t.teardown(() => dup.close());
  const f = new FaultFetcher({
    store: dup,
    lists,
    indexes: indexed.indexes,
    image,
    final,
    onReady: (pages) => {
      for (const p of pages) {
        seen[p]!++;
        if (!pageOf(image, p).equals(pageOf(eager, p))) early++;
      }
    },
    onError: (e) => errors.push(e),
  });
  const settle = async () => {
    for (let b = f.busy(); b; b = f.busy()) await b;
  };
  return { f, plan, lists, indexes: indexed.indexes, image, final, seen, errors, eager, settle, early: () => early };
}

t.test('a fault fetches only the frames holding its page, and gets the eager reader’s bytes', async (t) => {
  const srv = await testRedis(t);
  const store = new CheckpointStore(testClient(t, srv.url), 'vm-ix');
  const { ram } = await history(store);
  const x = await fetcherOf(t, store);
  t.ok(x.plan.base > 0 && x.plan.baseIndexBytes! > 0, `the base image (version ${x.plan.base}) has a page index of ${x.plan.baseIndexBytes} bytes`);
  t.ok(x.plan.chain.every((m) => m.indexBytes! > 0), 'every version on top has one');
  t.ok(x.eager.equals(ram), 'the eager image is the RAM as written');

  const zero = x.f.placeZeroPages();
  zero.forEach((q) => x.seen[q]!++); // announced by the caller (recover-lazy.ts)
  t.ok(zero.length >= 1 && zero.every((p) => ram.subarray(p * 4096, (p + 1) * 4096).every((b) => b === 0)), `${zero.length} pages no list holds, all zero`);
  // The first fault: a page newer versions hold deltas of, so it needs several frames.
  const p = [...Array(PAGES).keys()].find((q) => x.f.locator.frames(q).length >= 2) ?? [...Array(PAGES).keys()].find((q) => x.f.locator.held(q))!;
  const need = x.f.locator.frames(p);
  x.f.want(p);
  await x.settle();
  t.equal(x.f.stats.frames, need.length, `page ${p}: the ${need.length} frame(s) holding it fetched, no more`);
  t.ok(x.final[p] && pageOf(x.image, p).equals(pageOf(ram, p)), `page ${p} placed, its bytes as written`);
  // Which pages those frames complete depends on the random history: work it out from the index.
  const fetched = new Set(need.map((r) => `${r.list}:${r.frame}`));
  const completes = [...Array(PAGES).keys()].filter((q) => x.f.locator.held(q) && x.f.locator.frames(q).every((r) => fetched.has(`${r.list}:${r.frame}`)));
  t.equal(x.f.stats.pages, completes.length, `the pages those frames complete placed with it, no more (${completes.length})`);
  t.ok(completes.every((q) => x.final[q] && pageOf(x.image, q).equals(pageOf(ram, q))), 'each with its bytes as written');

  const order = [...Array(PAGES).keys()].sort(() => Math.random() - 0.5);
  for (const q of order) {
    x.f.want(q);
    await x.settle();
  }
  t.same(x.errors, []);
  t.ok(x.image.equals(ram), 'every page faulted in: the RAM as written');
  t.same([...new Set(x.seen)], [1], 'every page announced exactly once');
  t.equal(x.early(), 0, 'no page announced before it was final');
});

t.test('faults beside the background read: one image, each page announced once', async (t) => {
  const srv = await testRedis(t);
  const store = new CheckpointStore(testClient(t, srv.url), 'vm-both');
  const { ram } = await history(store);
  for (let round = 0; round < 3; round++) {
    const x = await fetcherOf(t, store);
    const onReady = (pages: number[]) => {
      for (const p of pages) x.seen[p]!++;
    };
    x.f.placeZeroPages().forEach((p) => x.seen[p]!++);
    let faults = 0;
    const loading = loadNewestFirst(store, x.plan, x.image, {
      onReady,
      // A fault now and then while the read goes on, as the guest's would come.
      onProgress: () => {
        if (faults++ % 2 === 0) x.f.want(Math.floor(Math.random() * PAGES));
      },
      indexed: { indexes: x.indexes, final: x.final },
      pause: () => x.f.busy(),
    });
    await loading;
    await x.settle();
    t.same(x.errors, [], `round ${round}`);
    t.ok(x.image.equals(ram), `round ${round}: the RAM as written`);
    t.same([...new Set(x.seen)], [1], `round ${round}: every page announced exactly once (${x.f.stats.pages} by the fault path)`);
  }
});

/** Sets a version's index key and its length in its metadata. */
async function setIndex(redis: Redis, vm: string, v: number, buf: Buffer | null, bytes?: number) {
  const k = vmKeys(vm);
  if (buf) await redis.set(k.index(v), buf);
  else await redis.del(k.index(v));
  if (bytes === undefined) await redis.hdel(k.version(v), 'indexBytes');
  else await redis.hset(k.version(v), 'indexBytes', String(bytes));
}

t.test('without a sound index the read goes on without one, and gets the same image', async (t) => {
  const srv = await testRedis(t);
  const redis = testClient(t, srv.url);
  const vm = 'vm-old';
  const store = new CheckpointStore(redis, vm);
  const { ram, head } = await history(store);
  const k = vmKeys(vm);
  const good = (await redis.getBuffer(k.index(head)))!;
  const other = (await redis.getBuffer(k.index(head - 1)))!;
  const flipped = Buffer.from(good);
  flipped[flipped.length - 3]! ^= 0x10;
  const cases: [string, Buffer | null, number | undefined, RegExp][] = [
    ['no index (an older migsafe)', null, undefined, new RegExp(`VM "${vm}" version ${head} has no page index`)],
    ['its key gone', null, good.length, /its page index is missing from the store/],
    ['a byte flipped', flipped, good.length, /page index refused: (checksum mismatch|not a page index)/],
    ['truncated', good.subarray(0, good.length - 5), good.length, /page index refused: .* bytes, the metadata says/],
    ['another version’s', other, other.length, /page index refused: (foreign|.*describes)/],
  ];
  for (const [name, buf, bytes, why] of cases) {
    await setIndex(redis, vm, head, buf, bytes);
    const plan = await planRestore(store);
    const r = await loadIndexes(store, plan, await listsOf(store, plan));
    t.ok('why' in r && why.test(r.why), `${name}: not used (${'why' in r ? r.why : 'used'})`);
    const image = Buffer.alloc(RAM);
    await loadNewestFirst(store, plan, image, { onReady: () => {} });
    t.ok(image.equals(ram), `${name}: the lazy read without it is the RAM as written`);
    t.ok((await loadImage(store, plan)).image.equals(ram), `${name}: so is the eager read`);
  }
  await setIndex(redis, vm, head, good, good.length);
  const plan = await planRestore(store);
  t.ok('indexes' in (await loadIndexes(store, plan, await listsOf(store, plan))), 'put back, it is used again');

  // A version of pre-framed chunks (addChunk: its records are not looked at) gets no index.
  const n = native();
  const shadow = Buffer.from(ram);
  mutate(ram, 10, 4);
  const pending = await store.begin(head);
  const dirty = n.scanDirty(ram, shadow);
  const recs = n.encodeBatch(ram, shadow, dirty);
  pending.addChunk(await encodeFrame('pages', recs, dirty.length, codec, pending.chunkBinding(0)));
  await pending.setDevice(deviceOf(pending.version), codec);
  const m = await pending.commit({ pages: dirty.length, bytesRaw: dirty.length * 4096, pauseMs: 1, deviceStateBytes: 20, dirtySource: 'scan', codec: 'lz4:1', stage1Pages: dirty.length, stage2Pages: 0 });
  t.equal(m.indexBytes, undefined, 'a version of pre-framed chunks has no index');
  t.equal(await redis.exists(k.index(m.version)), 0, 'nor an index key');
  const p2 = await planRestore(store);
  const r2 = await loadIndexes(store, p2, await listsOf(store, p2));
  t.ok('why' in r2, 'so the plan goes without indexes');
});

t.test('a frame its index misdescribes, or a damaged page, is never served by the fault path', async (t) => {
  const srv = await testRedis(t);
  const redis = testClient(t, srv.url);
  const vm = 'vm-lie';
  const store = new CheckpointStore(redis, vm);
  await store.init(['q'], RAM);
  const ram = randomBytes(RAM);
  const shadow = Buffer.alloc(RAM);
  const v = (await writeVersion(store, ram, shadow, 0, codec, { perFrame: 16 })).version;
  const k = vmKeys(vm);
  const meta = (await store.meta(v))!;

  // A well-formed index of this version (checksum and all) that swaps two pages of frame 0.
  const frames = await store.chunkRange(v, 0, meta.chunks - 1);
  const builder = new PageIndexBuilder();
  const decoded = [];
  for (const [i, f] of frames.entries()) {
    const d = await decodeFrame(f, { kind: 'pages', bind: { vm, version: v, list: 'version', index: i }, maxRecords: PAGES }, 'test');
    decoded.push(d);
    const bp = batchPages(d.raw);
    if (i === 0) [bp.pages[0], bp.pages[1]] = [bp.pages[1]!, bp.pages[0]!];
    builder.addFrame(bp);
  }
  const forged = builder.encode({ vm, version: v, list: 'version' })!;
  await setIndex(redis, vm, v, forged, forged.length);
  let x = await fetcherOf(t, store);
  const p0 = batchPages(decoded[0]!.raw).pages[0]!;
  x.f.want(p0);
  await x.settle();
  t.match(x.errors[0]?.message ?? '', /chunk 0: its records are not what the page index says/, 'the fetched frame is checked against the index');
  t.equal(x.seen.reduce((a, b) => a + b, 0), 0, 'nothing announced');
  x.f.want(p0 + 20);
  await x.settle();
  t.equal(x.errors.length, 1, 'and nothing fetched after the failure');

  // The background read checks every frame against the index as well.
  const plan = await planRestore(store);
  const lists = await listsOf(store, plan);
  const ix = await loadIndexes(store, plan, lists);
  await t.rejects(
    loadNewestFirst(store, plan, Buffer.alloc(RAM), { onReady: () => {}, indexed: { indexes: 'indexes' in ix ? ix.indexes : [], final: new Uint8Array(PAGES) } }),
    /chunk 0: its records are not what the page index says/,
  );

  // The right index back, and a page damaged inside a frame that is sound otherwise.
  const b2 = new PageIndexBuilder();
  for (const d of decoded) b2.addFrame(batchPages(d.raw));
  const right = b2.encode({ vm, version: v, list: 'version' })!;
  await setIndex(redis, vm, v, right, right.length);
  const bind = { vm, version: v, list: 'version' as const, index: 2 };
  const raw = Buffer.from(decoded[2]!.raw);
  const rec = [...batchRecords(raw)][3]!;
  rec.payload[7]! ^= 1;
  await redis.lset(k.chunks(v), 2, await encodeFrame('pages', raw, decoded[2]!.count, codec, bind));
  x = await fetcherOf(t, store).catch(() => undefined as never); // the eager reader refuses the version
  t.notOk(x, 'the eager reader refuses the damaged version');
  const plan2 = await planRestore(store);
  const lists2 = await listsOf(store, plan2);
  const ix2 = await loadIndexes(store, plan2, lists2);
  t.ok('indexes' in ix2, 'the index itself is sound');
  const errors: Error[] = [];
  const announced: number[] = [];
  const f = new FaultFetcher({
    store,
    lists: lists2,
    indexes: 'indexes' in ix2 ? ix2.indexes : [],
    image: Buffer.alloc(RAM),
    final: new Uint8Array(PAGES),
    onReady: (p) => announced.push(...p),
    onError: (e) => errors.push(e),
  });
  f.want(rec.page);
  for (let b = f.busy(); b; b = f.busy()) await b;
  t.match(errors[0]?.message ?? '', new RegExp(`page ${rec.page} \\(guest address 0x${(rec.page * 4096).toString(16)}\\) of VM "${vm}" version ${v} \\(chunk 2\\) fails its check`));
  t.notOk(announced.includes(rec.page), 'the damaged page was never announced');
});

t.test('compaction indexes the base and drops the folded versions’ indexes; gc finds strays', async (t) => {
  const srv = await testRedis(t);
  const redis = testClient(t, srv.url);
  const vm = 'vm-gc';
  const store = new CheckpointStore(redis, vm);
  await history(store);
  const k = vmKeys(vm);
  const base = Number(await redis.get(k.base));
  const bm = (await store.meta(base))!;
  t.equal(await redis.strlen(k.baseIndex), bm.baseIndexBytes, 'base:index is as long as the base version’s metadata says');
  t.equal(bm.indexBytes, undefined, 'the base version’s own index is dropped from its metadata');
  for (let v = 1; v <= base; v++) t.equal(await redis.exists(k.index(v)), 0, `version ${v}: no index key left`);
  t.same((await findGarbage(redis, vm, (await keysByVm(redis)).get(vm)!)).keys, [], 'no garbage');
  await redis.set(k.index(99), 'x');
  await redis.set(k.newBaseIndex(7), 'x');
  const g = await findGarbage(redis, vm, (await keysByVm(redis)).get(vm)!);
  t.same(g.keys.map((x) => x.key).sort(), [k.index(99), k.newBaseIndex(7)].sort(), 'a stray version index and an unfinished compaction’s index are garbage');
});
