// Hostile or broken store contents through the real CLI (`migsafe recover`, as an operator runs
// it) against a real redis-server: each row is a kind of bad input — a VM not in the store, a
// frame copied from another VM, a cyclic chain, a version gap, an oversize length, a truncated
// device state — with its exit status and message. For each: nothing started (the recorded
// "QEMU" is a script that leaves a marker), no RAM or device-state file written, the store
// byte for byte as it was. The control row recovers an intact older version and does reach the
// launch (the marker appears), so the refusals are the checks', not a CLI that refuses all.
// (The same contents against the reader itself: store-hostile.test.ts.)
import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pack, unpack } from 'msgpackr';
import type { Redis } from 'ioredis';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import { parseCodec } from '../../src/store/frame.js';
import { vmKeys } from '../../src/store/keys.js';
import { testClient, testRedis } from '../helpers/redis.js';
import { mutate, writeVersion } from '../helpers/store.js';
import { cliEnv, runCli } from '../helpers/cli.js';

const RAM = 64 * 4096;
const codec = parseCodec('zstd:1');
const dir = mkdtempSync(join(tmpdir(), 'migsafe-bad-store-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const marker = join(dir, 'started');
// What a recovery would run: it leaves the marker, so a refused row can show nothing started.
const fakeQemu = join(dir, 'fake-qemu');
writeFileSync(fakeQemu, `#!/bin/sh\ntouch ${marker}\n`);
chmodSync(fakeQemu, 0o755);

async function filled(redis: Redis, id: string, n: number): Promise<void> {
  const store = new CheckpointStore(redis, id);
  await store.init([fakeQemu, '-m', '1M'], RAM);
  const ram = randomBytes(RAM);
  const shadow = Buffer.alloc(RAM);
  let parent = 0;
  for (let i = 0; i < n; i++) {
    if (i) mutate(ram, 12, 8);
    parent = (await writeVersion(store, ram, shadow, parent, codec, { perFrame: 8 })).version;
  }
}

/** The lease's keys (its owner and fencing epoch). */
const LEASE_KEYS = /:(epoch|owner)$/;

/** Every key of the store (but those `skip` matches) and its value. */
async function dump(redis: Redis, skip?: RegExp): Promise<string> {
  const out: string[] = [];
  for (const k of (await redis.keys('*')).sort()) if (!skip?.test(k)) out.push(k, (await redis.dumpBuffer(k))?.toString('hex') ?? '');
  return out.join('\n');
}

interface Row {
  what: string;
  /** Makes the store bad; returns what puts it back. */
  spoil: (redis: Redis) => Promise<() => Promise<void>>;
  args: string[];
  message: RegExp;
  /** Found only by reading the frames (under the lease), not from the metadata before it. */
  framesRead?: boolean;
}

const a = vmKeys('vm-a');
const b = vmKeys('vm-b');
const setList = async (redis: Redis, key: string, i: number, v: Buffer) => void (await redis.lset(key, i, v));
const rows: Row[] = [
  {
    what: 'a VM that is not in the store',
    spoil: async () => async () => {},
    args: ['--vm', 'vm-c'],
    message: /no VM "vm-c" in the store: check --vm \(see `migsafe inspect`\)/,
  },
  {
    what: "a frame copied from another VM's version",
    framesRead: true,
    spoil: async (redis) => {
      const mine = (await redis.lindexBuffer(a.chunks(2), 0))!;
      await setList(redis, a.chunks(2), 0, (await redis.lindexBuffer(b.chunks(2), 0))!);
      return () => setList(redis, a.chunks(2), 0, mine);
    },
    args: ['--vm', 'vm-a'],
    message: /VM "vm-a" version 2, chunk 0: foreign frame: it belongs to VM "vm-b" version 2/,
  },
  {
    what: 'a cyclic chain',
    spoil: async (redis) => {
      await redis.hset(a.version(2), 'parent', '3');
      return async () => void (await redis.hset(a.version(2), 'parent', '1'));
    },
    args: ['--vm', 'vm-a'],
    message: /VM "vm-a": version 2 names version 3 as its parent, which is not older \(a cycle.*`migsafe recover --vm vm-a --version 1`/,
  },
  {
    what: 'a version gap (a parent that is gone)',
    spoil: async (redis) => {
      const saved = (await redis.dumpBuffer(a.version(2)))!;
      await redis.del(a.version(2));
      return async () => void (await redis.restore(a.version(2), 0, saved));
    },
    args: ['--vm', 'vm-a'],
    message: /broken delta chain of VM "vm-a": metadata of version 2 is missing; nothing was restored\. An older version's chain is intact: `migsafe recover --vm vm-a --version 1`/,
  },
  {
    what: 'a frame claiming a 4 GiB raw length',
    framesRead: true,
    spoil: async (redis) => {
      const good = (await redis.lindexBuffer(a.chunks(3), 0))!;
      await setList(redis, a.chunks(3), 0, pack({ ...(unpack(good) as object), r: 2 ** 32 - 1, n: 1 }));
      return () => setList(redis, a.chunks(3), 0, good);
    },
    args: ['--vm', 'vm-a'],
    message: /version 3, chunk 0: header says 4294967295 raw bytes, more than 1 records can hold/,
  },
  {
    what: 'a truncated device state',
    framesRead: true,
    spoil: async (redis) => {
      const dev = (await redis.getBuffer(a.device(3)))!;
      await redis.set(a.device(3), dev.subarray(0, dev.length - 5));
      return async () => void (await redis.set(a.device(3), dev));
    },
    args: ['--vm', 'vm-a'],
    message: /VM "vm-a" version 3, device state: not a migsafe frame/,
  },
];

async function noTrace(t: Test, env: NodeJS.ProcessEnv): Promise<void> {
  t.notOk(existsSync(marker), 'nothing was started');
  t.same(readdirSync(env.MIGSAFE_RUN_DIR!), [], 'no file was written (RAM, device state, QEMU log)');
}

t.test('bad store contents are refused by recover, each with its error, and nothing changes', async (t) => {
  const srv = await testRedis(t);
  const redis = testClient(t, srv.url);
  await filled(redis, 'vm-a', 3);
  await filled(redis, 'vm-b', 3);
  const pristine = await dump(redis, LEASE_KEYS);
  for (const row of rows) {
    await t.test(row.what, async (t) => {
      const env = cliEnv(t);
      const putBack = await row.spoil(redis);
      const before = await dump(redis, row.framesRead ? LEASE_KEYS : undefined);
      const r = await runCli(['recover', ...row.args, '--redis', srv.url, '--detach'], env, 60_000);
      t.not(r.code, 0, `refused (status ${r.code})`);
      t.match(r.stderr, row.message, `says why: ${r.stderr.trim().split('\n').pop()}`);
      t.equal(r.stdout, '', 'no result on stdout');
      t.notMatch(r.stderr, /\n\s+at .*\.js:\d+/, 'no stack trace');
      await noTrace(t, env);
      if (row.framesRead) {
        // Refused while reading frames, under the VM's lease: taken and released, so its fencing
        // epoch counts one more; nothing else differs.
        t.equal(await dump(redis, LEASE_KEYS), before, 'the checkpoints are byte for byte as they were');
        t.equal(await redis.exists(a.owner), 0, 'and the lease was released');
      } else {
        t.equal(await dump(redis), before, 'the store is byte for byte as it was (refused before the lease was taken)');
      }
      await putBack();
    });
  }
  t.equal(await dump(redis, LEASE_KEYS), pristine, 'every row put back');

  // Control: with the same store intact, recover gets past every check to the launch.
  const env = cliEnv(t);
  const r = await runCli(['recover', '--vm', 'vm-a', '--redis', srv.url, '--detach'], env, 60_000);
  t.ok(existsSync(marker), `the intact store reaches the launch of its recorded command (then: ${r.stderr.trim().split('\n').pop()})`);
});
