// Fencing enforced by the store (real redis-server): a writer commits and compacts only while
// it holds the VM's lease; a stale owner's commit is refused atomically and changes nothing.
// Then the CLI: one writer per VM id, and a frozen writer is fenced off when it wakes.
import t from 'tap';
import { CheckpointStore, FencedError } from '../../src/store/checkpoint-store.js';
import { parseCodec } from '../../src/store/frame.js';
import { LeaseStore } from '../../src/store/lease-store.js';
import { Lease } from '../../src/ha/lease.js';
import { compact } from '../../src/store/compaction.js';
import { planRestore } from '../../src/store/reader.js';
import { vmKeys } from '../../src/store/keys.js';
import { testRedis, testClient } from '../helpers/redis.js';
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitFor } from '../helpers/wait.js';
import { ensureGuestBuilt, guestQemuArgs } from '../helpers/guest.js';
import { alive, cliEnv, killQuietly, runCli, startCli } from '../helpers/cli.js';

ensureGuestBuilt();

const codec = parseCodec('none');
const RAM = 16 * 4096;

/** A version with one empty frame and a device state (enough for the commit script's checks). */
async function smallVersion(store: CheckpointStore, parent: number) {
  const p = await store.begin(parent);
  await p.addPages(Buffer.alloc(0), codec);
  await p.setDevice(Buffer.from('dev'), codec);
  const commit = () =>
    p.commit({ pages: 0, bytesRaw: 0, pauseMs: 0, deviceStateBytes: 3, dirtySource: 'scan', codec: 'none:0', stage1Pages: 0, stage2Pages: 0 });
  return { p, commit };
}

t.test('commits and compactions are refused once another owner holds the lease', async (t) => {
  const srv = await testRedis(t);
  const redis = testClient(t, srv.url);
  const leases = new LeaseStore(redis, 'f1');
  const a = new CheckpointStore(redis, 'f1');
  await a.init(['q'], RAM);
  const tokenA = (await leases.acquire('host-a', 60_000))!;
  t.ok(tokenA > 0, 'host-a holds the lease');
  a.fenceWith(() => LeaseStore.value('host-a', tokenA));
  for (let v = 0; v < 3; v++) await (await smallVersion(a, await a.head())).commit();
  t.same(await a.committed(), [1, 2, 3], 'the holder commits');

  // A version under way when the lease changes hands (host-a paused past its TTL, say).
  const late = await smallVersion(a, 3);
  await leases.release(LeaseStore.value('host-a', tokenA));
  const tokenB = (await leases.acquire('host-b', 60_000))!;
  t.ok(tokenB > tokenA, 'host-b took the lease with a higher token');
  const err = await late.commit().then(
    () => undefined,
    (e: Error) => e,
  );
  t.type(err, FencedError, 'the stale owner commit is refused');
  t.match(err?.message ?? '', new RegExp(`written under lease host-a\\|${tokenA} but the lease is host-b\\|${tokenB}`), 'and says whose lease it is');
  t.same(await a.committed(), [1, 2, 3], 'nothing became visible');
  t.equal((await planRestore(a)).target.version, 3, 'the head is unchanged');

  await t.rejects(compact(a, 3, codec), FencedError, 'a stale compaction is refused too');
  t.equal((await planRestore(a)).base, 0, 'no base image was installed');
  t.same(await a.committed(), [1, 2, 3], 'and no version was dropped');
  t.equal(await redis.exists(vmKeys('f1').newBaseChunks(3)), 0, 'the refused base image was removed');

  // The new owner writes on; a writer fenced with no lease at all is refused as well.
  const b = new CheckpointStore(redis, 'f1');
  b.fenceWith(() => LeaseStore.value('host-b', tokenB));
  await (await smallVersion(b, 3)).commit();
  t.same((await b.committed()).slice(-1), [late.p.version + 1], "the new owner's version commits");
  const none = new CheckpointStore(redis, 'f1');
  none.fenceWith(() => '');
  await t.rejects((await smallVersion(none, await none.head())).commit(), /FENCED .* under lease no lease held/);
  // An expired lease is no lease: nobody commits under it.
  await redis.pexpire(vmKeys('f1').owner, 1);
  await new Promise((r) => setTimeout(r, 20));
  await t.rejects((await smallVersion(b, await b.head())).commit(), /FENCED .* but the lease is free/);
});

t.test('a lease that ran out while nobody held it is taken back under the same token; not once another held it', async (t) => {
  const srv = await testRedis(t);
  const redis = testClient(t, srv.url);
  const store = new CheckpointStore(redis, 'f3');
  await store.init(['q'], RAM);
  const a = new Lease(redis, 'f3', 'host-a', 60_000);
  t.ok(await a.acquire(), 'host-a holds the lease');
  const token = a.token;
  store.fenceWith(() => a.fencing());
  await (await smallVersion(store, 0)).commit();

  // The store away longer than the TTL (here: the key simply runs out).
  await redis.pexpire(vmKeys('f3').owner, 1);
  await new Promise((r) => setTimeout(r, 20));
  const err = await (await smallVersion(store, 1)).commit().then(
    () => undefined,
    (e: Error) => e,
  );
  t.type(err, FencedError, 'the commit under the run-out lease is refused');
  t.ok((err as FencedError).leaseFree, 'as one under a free lease');
  t.ok(await a.reclaim(), 'host-a takes it back');
  t.equal(a.token, token, 'with the same token');
  const next = await smallVersion(store, 1);
  await next.commit();
  t.same(await store.committed(), [1, next.p.version], 'and commits on (the refused version left nothing)');
  t.ok(await a.reclaim(), 'reclaiming a lease still held renews it');

  // host-b holds it in between and gives it up: host-a may not take it back.
  await redis.pexpire(vmKeys('f3').owner, 1);
  await new Promise((r) => setTimeout(r, 20));
  const b = new Lease(redis, 'f3', 'host-b', 60_000);
  t.ok(await b.acquire(), 'host-b takes the free lease');
  const held = await (await smallVersion(store, next.p.version)).commit().then(
    () => undefined,
    (e: Error) => e,
  );
  t.type(held, FencedError, "host-a's commit is refused while host-b holds it");
  t.notOk((held as FencedError).leaseFree, 'as one under a lease someone holds');
  await b.release();
  t.notOk(await a.reclaim(), 'after host-b had it, host-a cannot take it back');
  t.equal(await new LeaseStore(redis, 'f3').holder(), null, 'and the lease stays free');
});

t.test('one writer per VM: a second run is refused, a paused one is fenced off when it wakes', async (t) => {
  const srv = await testRedis(t);
  const env = cliEnv(t);
  const vm = 'f2';
  const serial = join(tmpdir(), `migsafe-fence-${process.pid}.serial`);
  const pid = (n: string) => join(tmpdir(), `migsafe-fence-${process.pid}.${n}.pid`);
  const argv = guestQemuArgs({ workload: 'idle', serialLog: serial, workloadMiB: 1 });
  // A lease long enough that the recovery surely starts (a CLI start) while the frozen writer still holds it.
  const common = ['--vm', vm, '--redis', srv.url, '--interval', '400', '--lease-ttl', '4000'];
  const a = startCli(['run', ...common, '--pidfile', pid('a'), '--', ...argv], env);
  const pids: number[] = [];
  t.teardown(() => {
    killQuietly(a.child.pid, 'SIGCONT');
    killQuietly(a.child.pid);
    pids.forEach((p) => killQuietly(p));
  });
  await waitFor('the first QEMU', 30_000, () => (existsSync(pid('a')) ? true : undefined));
  const qemuA = Number(readFileSync(pid('a'), 'utf8'));
  pids.push(qemuA);
  const store = new CheckpointStore(testClient(t, srv.url), vm);
  await waitFor('two committed versions', 90_000, async () => ((await store.committed()).length >= 2 ? true : undefined));

  const b = await runCli(['run', ...common, '--pidfile', pid('b'), '--', ...argv], env);
  t.not(b.code, 0, 'a second run on the same VM id is refused');
  t.match(b.stderr, new RegExp(`VM ${vm} is being checkpointed by \\S+:${a.child.pid} `), 'naming the holder (host:pid)');
  t.notOk(existsSync(pid('b')), 'and no second QEMU was started');

  // The first writer freezes (SIGSTOP) past its lease; a recovery takes the VM over.
  a.child.kill('SIGSTOP');
  const stoppedAt = a.err().length;
  const c = startCli(['recover', ...common, '--pidfile', pid('c')], env);
  t.teardown(() => killQuietly(c.child.pid));
  await waitFor('the recovery to run and commit', 90_000, () => (/recovered version[\s\S]*version \d+ committed/.test(c.err()) ? true : undefined));
  t.match(c.err(), /waiting for the lease held by \S+ to expire/, 'the recovery waited for the frozen writer to lose its lease');
  pids.push(Number(readFileSync(pid('c'), 'utf8')));

  a.child.kill('SIGCONT');
  t.equal(await a.exited, 4, 'the woken writer exits 4');
  const woke = a.err().slice(stoppedAt);
  t.match(woke, /fenced off \(.*\): another migsafe owns this VM now; QEMU told to quit/, 'and says why');
  t.notMatch(woke, /version \d+ committed/, 'it committed nothing after waking');
  await waitFor('the stale QEMU to quit', 15_000, () => (alive(qemuA) ? undefined : true));
  const headNow = await store.head();
  await waitFor('the new owner to commit on', 30_000, async () => ((await store.head()) > headNow ? true : undefined));
  t.pass('the recovered VM is checkpointed on by its new owner');
  // Each version names the lease it was committed under: none of the frozen writer's follows the new owner's first.
  const metas = await store.metas();
  const by = (pid: number | undefined) => metas.filter((m) => m.writer?.includes(`:${pid}|`)).map((m) => m.version);
  const [fromA, fromC] = [by(a.child.pid), by(c.child.pid)];
  t.ok(fromA.length > 0 && fromC.length > 0, `versions name their writers (${fromA.length} by the first, ${fromC.length} by the recovery)`);
  t.ok(Math.max(...fromA) < Math.min(...fromC), `the frozen writer's last version ${Math.max(...fromA)} precedes the new owner's first ${Math.min(...fromC)}`);
  c.child.kill('SIGTERM');
  t.equal(await c.exited, 0, 'the new owner stops cleanly');
});
