// A reader racing compaction on a real redis-server: compaction replaces the base and deletes
// the versions it folded while a reader is in the middle of them. Every image a read returns
// must be complete and exactly the one committed; otherwise the read fails — never short.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import { CorruptCheckpointError, parseCodec } from '../../src/store/frame.js';
import { loadImage, loadVersion, planRestore, MissingCheckpointError } from '../../src/store/reader.js';
import { compact } from '../../src/store/compaction.js';
import { testClient, testRedis } from '../helpers/redis.js';
import { deviceOf, mutate, writeVersion } from '../helpers/store.js';

const PAGES = 96;
const RAM = PAGES * 4096;
const codec = parseCodec('lz4');

t.test('compaction in the middle of a read: the read starts over and returns the right image', async (t) => {
  const srv = await testRedis(t);
  const writer = new CheckpointStore(testClient(t, srv.url), 'vm-r');
  const reader = new CheckpointStore(testClient(t, srv.url), 'vm-r');
  await writer.init(['q'], RAM);
  const ram = randomBytes(RAM);
  const shadow = Buffer.alloc(RAM);
  const images = new Map<number, Buffer>();
  let parent = 0;
  for (let i = 0; i < 6; i++) {
    if (i) mutate(ram, 30, 8);
    parent = (await writeVersion(writer, ram, shadow, parent, codec, { perFrame: 2 })).version;
    images.set(parent, Buffer.from(ram));
  }
  // Without retrying, the plan made before compaction reads lists that vanish under it.
  const stale = await planRestore(reader, 6);
  let compacted = false;
  const midway = async () => {
    if (compacted) return;
    compacted = true;
    t.same((await compact(writer, 5, codec)).dropped, [1, 2, 3, 4]);
  };
  // Compaction runs after the first frame is applied; the slice after the one in flight (read
  // ahead while the first is applied) is the first to find the list gone.
  await t.rejects(loadImage(reader, stale, midway), /the store returned 0 of frames 32\.\.47 \(the list shrank while it was read\)/);

  // loadVersion notices that the store moved under it and plans again.
  for (let i = 0; i < 3; i++) {
    mutate(ram, 30, 8);
    parent = (await writeVersion(writer, ram, shadow, parent, codec, { perFrame: 2 })).version;
    images.set(parent, Buffer.from(ram));
  }
  const retries: string[] = [];
  compacted = false;
  const seen: number[] = [];
  const got = await loadVersion(reader, 9, {
    onPlan: (p) => seen.push(p.base),
    onProgress: async (p) => {
      if (p.done === 3 && !compacted) {
        compacted = true;
        t.same((await compact(writer, 8, codec)).dropped, [5, 6, 7]);
      }
    },
    onRetry: (e) => retries.push(e.message),
  });
  t.equal(retries.length, 1, `started over once: ${retries[0]}`);
  t.same(seen, [5, 8], 'first from base 5, then from base 8');
  t.ok(got.image.equals(images.get(9)!), 'the image of version 9, whole');
  t.equal(got.deviceState.toString(), deviceOf(9).toString());
});

t.test('reads in a loop against compaction in a loop: every image whole and right, or an error', async (t) => {
  const srv = await testRedis(t, 'everysec');
  const writer = new CheckpointStore(testClient(t, srv.url), 'vm-loop');
  const compactor = new CheckpointStore(testClient(t, srv.url), 'vm-loop');
  const reader = new CheckpointStore(testClient(t, srv.url), 'vm-loop');
  await writer.init(['q'], RAM);
  const ram = randomBytes(RAM);
  const shadow = Buffer.alloc(RAM);
  const images = new Map<number, Buffer>();
  let parent = 0;
  let writing = true;
  const VERSIONS = 60;

  const write = async () => {
    for (let i = 0; i < VERSIONS; i++) {
      if (i) mutate(ram, 20, 16);
      const snap = Buffer.from(ram);
      parent = (await writeVersion(writer, ram, shadow, parent, codec, { perFrame: 2, beforeCommit: (v) => images.set(v, snap) })).version;
    }
    writing = false;
  };
  let compactions = 0;
  const compactLoop = async () => {
    while (writing) {
      const committed = await compactor.committed();
      const to = committed[committed.length - 3];
      if (to !== undefined && to > (await compactor.base())) {
        await compact(compactor, to, codec);
        compactions++;
      } else {
        await new Promise((r) => setImmediate(r));
      }
    }
  };
  const outcomes = { whole: 0, retried: 0, errors: 0, wrong: 0 };
  const errors = new Set<string>();
  const readLoop = async () => {
    let i = 0;
    while (writing) {
      const committed = await reader.committed();
      if (committed.length === 0) continue;
      // Alternately the newest and the oldest committed version: the one compaction drops next.
      const want = i++ % 2 ? committed[0] : undefined;
      try {
        const got = await loadVersion(reader, want, { onRetry: () => void outcomes.retried++ });
        const right = got.image.equals(images.get(got.version)!) && got.deviceState.equals(deviceOf(got.version));
        if (right) outcomes.whole++;
        else outcomes.wrong++;
      } catch (e) {
        if (!(e instanceof CorruptCheckpointError || e instanceof MissingCheckpointError)) throw e;
        outcomes.errors++;
        errors.add(e.message.replace(/\d+/g, 'N'));
      }
    }
  };
  await Promise.all([write(), compactLoop(), readLoop()]);
  t.comment(`${compactions} compactions; reads: ${JSON.stringify(outcomes)}; errors: ${[...errors].join(' | ')}`);
  t.equal(outcomes.wrong, 0, 'no read returned a short or mixed image');
  t.ok(outcomes.whole > 0, 'reads did succeed');
  t.ok(compactions > 0, 'compaction ran');
  for (const e of errors) t.match(e, /folded into the base image|is not committed|changed under/, `an expected error: ${e}`);
  // And after the dust settles, the newest version reads whole.
  const last = await loadVersion(reader);
  t.ok(last.image.equals(images.get(last.version)!));
});
