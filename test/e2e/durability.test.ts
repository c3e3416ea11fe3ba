// When a commit counts, against real redis-servers: fsync is refused where the server does not
// do it, replicas:N waits for N real replicas (REPLICAOF) and a commit they did not acknowledge
// is not reported — while the version stays usable as the next round's parent.
import t from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CheckpointStore, NotDurableError } from '../../src/store/checkpoint-store.js';
import { isDurable } from '../../src/store/version-meta.js';
import { parseCodec } from '../../src/store/frame.js';
import { settleDurability } from '../../src/store/durability.js';
import { planRestore } from '../../src/store/reader.js';
import { testRedis, testClient } from '../helpers/redis.js';
import { waitFor } from '../helpers/wait.js';
import { ensureGuestBuilt, guestQemuArgs } from '../helpers/guest.js';
import { cliEnv, killQuietly, runCli, startOwnedCli } from '../helpers/cli.js';

ensureGuestBuilt();
const codec = parseCodec('none');

async function smallVersion(store: CheckpointStore, parent: number) {
  const p = await store.begin(parent);
  await p.addPages(Buffer.alloc(0), codec);
  await p.setDevice(Buffer.from('dev'), codec);
  return p.commit({ pages: 0, bytesRaw: 0, pauseMs: 0, deviceStateBytes: 3, dirtySource: 'scan', codec: 'none:0', stage1Pages: 0, stage2Pages: 0 });
}

const port = (url: string) => url.split(':').pop()!;

t.test('fsync: refused where appendfsync is not always, unless migsafe owns the server', async (t) => {
  const srv = await testRedis(t, 'everysec');
  const redis = testClient(t, srv.url);
  await t.rejects(settleDurability(redis, { kind: 'fsync' }, false, srv.url), /--durability fsync: Redis at .* has appendonly yes and appendfsync everysec/);
  t.same(await settleDurability(redis, { kind: 'auto' }, false, srv.url), { kind: 'none' }, 'auto falls back to none there');
  t.same(await settleDurability(redis, { kind: 'auto' }, true, srv.url), { kind: 'fsync' }, 'its own server is told to fsync');
  t.same(await redis.call('CONFIG', 'GET', 'appendfsync'), ['appendfsync', 'always'], 'and does');

  const other = await testRedis(t, 'everysec');
  const env = cliEnv(t);
  const pidfile = join(tmpdir(), `migsafe-dur-${process.pid}.pid`);
  const r = await runCli(['run', '--vm', 'd0', '--redis', other.url, '--durability', 'fsync', '--pidfile', pidfile, '--', ...guestQemuArgs({ workload: 'idle', serialLog: join(tmpdir(), 'migsafe-dur0.serial') })], env);
  t.not(r.code, 0, 'run --durability fsync on such a server is refused');
  t.match(r.stderr, /set `appendonly yes` and `appendfsync always` there, or use --durability replicas:N or none/, 'saying what to change');
  t.notOk(existsSync(pidfile), 'before QEMU was started');
  const bad = await runCli(['run', '--vm', 'd0', '--durability', 'replicas:0', '--', 'qemu-system-x86_64'], env);
  t.equal(bad.code, 2);
  t.match(bad.stderr, /--durability replicas:0: use auto, fsync, none or replicas:N\[:TIMEOUT_MS\] \(N from 1 to 1000 replicas/);
});

t.test('replicas:1 — a commit counts only once a real replica has it', async (t) => {
  const primary = await testRedis(t);
  const redis = testClient(t, primary.url);
  const store = new CheckpointStore(redis, 'd1');
  await store.init(['q'], 4096 * 4);
  store.setDurability(await settleDurability(redis, { kind: 'replicas', replicas: 1, timeoutMs: 200 }, false, primary.url));

  const err = await smallVersion(store, 0).then(
    () => undefined,
    (e: Error) => e,
  );
  t.type(err, NotDurableError, 'with no replica the commit is not reported');
  t.match(err?.message ?? '', /version 1 is in the store but fewer than 1 replica\(s\) acknowledged it within 200 ms/);
  t.same(await store.committed(), [1], 'the version is in the store: the next deltas may apply to it');
  const durable = async () => (await store.metas()).map((m) => `${m.version}:${m.durability}:${isDurable(m)}`).join(' ');
  t.equal(await durable(), '1:replicas:1:false', 'and its metadata says it is not durable by its policy (inspect shows NO)');

  const replicaSrv = await testRedis(t);
  const replica = testClient(t, replicaSrv.url);
  await replica.call('REPLICAOF', '127.0.0.1', port(primary.url));
  await waitFor('the replica to sync', 30_000, async () => (/master_link_status:up/.test(await replica.info('replication')) ? true : undefined));
  const m = await smallVersion(store, 1);
  t.equal(m.version, 2, 'with a replica, the next version commits and is reported');
  t.equal(await durable(), '1:replicas:1:true 2:replicas:1:true', "the replica's acknowledgement covers the earlier version too");
  await waitFor('the replica to have it', 5_000, async () => ((await replica.zrange('migsafe:{d1}:committed', 0, -1)).join(',') === '1,2' ? true : undefined));
  t.equal((await planRestore(new CheckpointStore(replica, 'd1'))).target.version, 2, 'the replica alone can restore version 2');
  await t.rejects(settleDurability(replica, { kind: 'replicas', replicas: 1, timeoutMs: 200 }, false, replicaSrv.url), /is a slave, not a primary/);

  await replicaSrv.stop();
  await waitFor('the primary to see its replica gone', 30_000, async () => (/connected_slaves:0/.test(await redis.info('replication')) ? true : undefined));
  await t.rejects(smallVersion(store, 2), NotDurableError, 'the replica gone, commits are not reported again');
  t.match(await durable(), / 3:replicas:1:false$/, 'and say so');
});

t.test('run with replicas:1: rounds are not reported until a replica is there, then go on', async (t) => {
  const primary = await testRedis(t);
  const env = cliEnv(t);
  const serial = join(tmpdir(), `migsafe-dur-${process.pid}.serial`);
  const pidfile = join(tmpdir(), `migsafe-dur2-${process.pid}.pid`);
  const run = startOwnedCli(
    t,
    ['run', '--vm', 'd2', '--redis', primary.url, '--interval', '400', '--durability', 'replicas:1:200', '--pidfile', pidfile, '--', ...guestQemuArgs({ workload: 'idle', serialLog: serial })],
    env,
    pidfile,
  );
  let qemuPid = await run.qemuPid();
  await waitFor('two unacknowledged rounds', 90_000, () => ((run.err().match(/fewer than 1 replica/g) ?? []).length >= 2 ? true : undefined));
  t.notMatch(run.err(), /version \d+ committed/, 'no round is reported while no replica acknowledges it');
  const shown = await runCli(['inspect', '--vm', 'd2', '--redis', primary.url], env);
  t.match(shown.stdout, /\n\s+1 .* NO \(replicas:1\)/, 'inspect shows them as not durable');

  const replicaSrv = await testRedis(t);
  const replica = testClient(t, replicaSrv.url);
  await replica.call('REPLICAOF', '127.0.0.1', port(primary.url));
  await waitFor('a reported round', 60_000, () => (/version \d+ committed/.test(run.err()) ? true : undefined));
  const store = new CheckpointStore(testClient(t, primary.url), 'd2');
  const plan = await planRestore(store);
  t.ok(plan.chain.length >= 2, `the reported version applies to the unreported ones before it (chain ${plan.chain.map((m) => m.version).join(',')})`);
  const after = JSON.parse((await runCli(['inspect', '--vm', 'd2', '--redis', primary.url, '--json'], env)).stdout) as { versions: { version: number; durable: boolean }[] };
  t.ok(after.versions[0]!.durable, 'once a replica acknowledged a later round, inspect shows the first one durable too');
  run.child.kill('SIGTERM');
  t.equal(await run.exited, 0);
  const rec = await runCli(['recover', '--vm', 'd2', '--redis', primary.url, '--detach', '--pidfile', pidfile], env);
  t.equal(rec.code, 0, `the chain recovers (${rec.stderr.trim().split('\n').pop()})`);
  killQuietly(Number(readFileSync(pidfile, 'utf8')));
});
