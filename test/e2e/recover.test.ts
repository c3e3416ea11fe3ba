// The core promise on stock QEMU: a real guest is checkpointed into a real redis-server by the
// real CLI; its QEMU is killed with SIGKILL; `migsafe recover` brings it back from the last
// committed version, and the guest goes on from there with its memory intact.
import t from 'tap';
import { copyFileSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitFor } from '../helpers/wait.js';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import { vmKeys } from '../../src/store/keys.js';
import { startRedisServer } from '../../src/store/redis-server.js';
import { loadImage, planRestore } from '../../src/store/reader.js';
import { ensureGuestBuilt, findProgressInImage, guestQemuArgs, waitForConsole, type GuestWorkload } from '../helpers/guest.js';
import { testClient, testRedis } from '../helpers/redis.js';
import { alive, cliEnv, killQuietly, runCli, startOwnedCli } from '../helpers/cli.js';

ensureGuestBuilt();

/** Region sizes small enough for TCG on a busy 2-core machine, large enough to matter. */
const WORKLOADS: { wl: GuestWorkload; mib: number; rate?: number; compactEvery?: number; threads?: number }[] = [
  { wl: 'idle', mib: 1 },
  { wl: 'wset', mib: 32, compactEvery: 2, threads: 2 },
  { wl: 'qsort', mib: 2 },
  { wl: 'kv', mib: 0, rate: 50000 },
];

for (const { wl, mib, rate, compactEvery, threads } of WORKLOADS) {
  t.test(`${wl}: kill -9 QEMU, recover, the guest continues from the last committed version`, async (t) => {
    const srv = await testRedis(t);
    const env = cliEnv(t);
    const vm = `e2e-${wl}`;
    const serial = join(tmpdir(), `migsafe-${vm}-${process.pid}.serial`);
    const pidfile = join(tmpdir(), `migsafe-${vm}-${process.pid}.pid`);
    const argv = guestQemuArgs({ workload: wl, serialLog: serial, workloadMiB: mib || undefined, rate });
    const run = startOwnedCli(
      t,
      [
        'run', '--vm', vm, '--redis', srv.url, '--interval', '700', '--pidfile', pidfile,
        // One workload recovers through a compacted base image.
        ...(compactEvery ? ['--compact-every', String(compactEvery)] : []),
        // and encodes its batches with two threads (chunks claimed by both, same records).
        ...(threads ? ['--threads', String(threads)] : []),
        '--', ...argv,
      ],
      env,
      pidfile,
    );
    let qemuPid = await run.qemuPid();

    // Let it run: the workload verifies itself, and several versions are committed.
    await waitForConsole(serial, (c) => c.verifiedCount >= 2, 90_000);
    const store = new CheckpointStore(testClient(t, srv.url), vm);
    // Versions committed after the workload has counted: the checkpoint holds its record.
    const headThen = await store.head();
    const seen = await waitFor('two more committed versions', 90_000, async () => {
      const c = await store.committed();
      // With --compact-every, also a first compaction (a loaded host may not have got there yet).
      const based = !compactEvery || (await store.base()) > 0;
      return based && c.length >= 3 && c[c.length - 1]! >= headThen + 2 ? c : undefined;
    });
    t.ok(seen.length >= 3, `versions committed: ${seen.join(',')}`);
    t.same(parseErrors(serial), [], 'no memory errors before the failure');

    // The failure.
    process.kill(qemuPid, 'SIGKILL');
    const code = await run.exited;
    t.equal(code, 3, 'the sidecar reports the dead QEMU');
    t.match(run.err(), /QEMU is gone .*Recover with: migsafe recover --vm/);
    const before = readFileSync(serial, 'latin1');
    copyFileSync(serial, `${serial}.before`);

    // What was committed last, and the guest's progress counter inside it.
    const plan = await planRestore(store);
    if (compactEvery) t.ok(plan.base > 0, `recovery starts from the base image at version ${plan.base}`);
    const image = (await loadImage(store, plan)).image;
    const committedCounter = findProgressInImage(image);
    t.not(committedCounter, null, 'the committed image holds the progress record');
    const k = Number(committedCounter);
    const lastPrinted = parseLast(before);
    t.ok(lastPrinted !== null && lastPrinted >= k - 1, `console had reached ${lastPrinted}, checkpoint holds ${k}`);

    const rec = await runCli(['recover', '--vm', vm, '--redis', srv.url, '--detach', '--pidfile', pidfile], env);
    t.equal(rec.code, 0, `recover exits 0 (${rec.stderr.trim().split('\n').pop()})`);
    const info = JSON.parse(rec.stdout.trim().split('\n').pop()!) as { version: number; pid: number };
    t.equal(info.version, plan.target.version, 'restored the newest committed version');
    qemuPid = run.own(info.pid);
    t.ok(alive(qemuPid), 'the recovered QEMU runs');

    const after = await waitForConsole(serial, (c) => c.verifiedCount >= 2 || c.errors.length > 0, 90_000);
    t.same(after.errors.map((e) => e.raw), [], 'the recovered guest finds its memory intact');
    const first = after.progress[0]!.counter;
    t.ok(first === k || first === k + 1, `resumed at counter ${first}: from the checkpoint (${k}), not restarted, not ahead`);
    t.ok(after.progress.every((p, i) => i === 0 || p.counter === after.progress[i - 1]!.counter + 1), 'counts on by one');
    killQuietly(qemuPid);
  });
}

t.test('recovery refuses what it cannot do, and changes nothing', async (t) => {
  const srv = await testRedis(t);
  const env = cliEnv(t);
  const r1 = await runCli(['recover', '--vm', 'nobody', '--redis', srv.url, '--detach'], env);
  t.not(r1.code, 0);
  t.match(r1.stderr, /no VM "nobody" in the store/);
  const r2 = await runCli(['recover', '--vm', 'bad id!', '--redis', srv.url], env);
  t.equal(r2.code, 2);
  t.match(r2.stderr, /invalid VM id/);

  // A short real run, then one flipped byte in a stored chunk.
  const serial = join(tmpdir(), `migsafe-corrupt-${process.pid}.serial`);
  const pidfile = join(tmpdir(), `migsafe-corrupt-${process.pid}.pid`);
  const run = startOwnedCli(
    t,
    ['run', '--vm', 'c1', '--redis', srv.url, '--interval', '500', '--pidfile', pidfile, '--',
      ...guestQemuArgs({ workload: 'idle', serialLog: serial })],
    env,
  );
  t.teardown(() => killQuietly(run.child.pid));
  const redis = testClient(t, srv.url);
  const store = new CheckpointStore(redis, 'c1');
  await waitFor('two versions', 90_000, async () => ((await store.committed()).length >= 2 ? true : undefined));
  run.child.kill('SIGTERM');
  t.equal(await run.exited, 0, 'SIGTERM stops the sidecar cleanly');
  t.match(run.err(), /stopped; QEMU told to quit/);
  await waitFor('QEMU to quit', 10_000, async () => (alive(Number(readFileSync(pidfile, 'utf8'))) ? undefined : true));

  const head = await store.head();
  // Damage done behind the store's back, at its keys (keys.ts).
  const key = vmKeys('c1').chunks(head);
  const n = await store.chunkCount(head);
  t.ok(n > 0, 'the newest version has chunks');
  const frame = (await redis.lindexBuffer(key, n - 1))!;
  const bad = Buffer.from(frame);
  bad[bad.length - 5] ^= 0xff;
  await redis.lset(key, n - 1, bad);
  const ramFilesBefore = readdirSync(env.MIGSAFE_RUN_DIR!).filter((f) => f.endsWith('.ram'));
  const r3 = await runCli(['recover', '--vm', 'c1', '--redis', srv.url, '--detach'], env);
  t.not(r3.code, 0, 'a corrupt checkpoint is refused');
  t.match(r3.stderr, new RegExp(`version ${head}, chunk ${n - 1}`), 'the error says where');
  t.same(readdirSync(env.MIGSAFE_RUN_DIR!).filter((f) => f.endsWith('.ram')), ramFilesBefore, 'no RAM file was written');

  // Truncated: the older version is still whole and can be asked for by number.
  await redis.lset(key, n - 1, frame.subarray(0, 10));
  const r4 = await runCli(['recover', '--vm', 'c1', '--redis', srv.url, '--detach'], env);
  t.not(r4.code, 0, 'a truncated checkpoint is refused');
  const r5 = await runCli(['recover', '--vm', 'c1', '--redis', srv.url, '--detach', '--version', '99'], env);
  t.match(r5.stderr, /version 99 of VM "c1" is not committed/);
});

t.test('a QEMU that exits on its own, or never starts', async (t) => {
  const srv = await testRedis(t);
  const env = cliEnv(t);
  // The guest kernel finds no init, panics, and -no-reboot turns the reboot into an exit.
  const serial = join(tmpdir(), `migsafe-exit-${process.pid}.serial`);
  const argv = guestQemuArgs({ workload: 'idle', serialLog: serial, extraAppend: 'rdinit=/no-such-init init=/no-such-init' });
  const r = await runCli(['run', '--vm', 'x1', '--redis', srv.url, '--interval', '300', '--', ...argv], env, 120_000);
  t.equal(r.code, 0, 'the sidecar ends when QEMU ends');
  t.match(r.stderr, /QEMU exited normally/);
  const bad = await runCli(['run', '--vm', 'x2', '--redis', srv.url, '--', 'qemu-system-x86_64', '-m', '64M', '-no-such-option'], env);
  t.equal(bad.code, 2);
  t.match(bad.stderr, /QEMU exited \(1\) at start/);
  const none = await runCli(['run', '--vm', 'x3', '--redis', srv.url], env);
  t.equal(none.code, 2);
  t.match(none.stderr, /no QEMU command line/);
});

function parseErrors(serial: string): string[] {
  return readFileSync(serial, 'latin1')
    .split('\n')
    .filter((l) => l.includes('MIGSAFE ERROR'));
}

function parseLast(text: string): number | null {
  const m = [...text.matchAll(/MIGSAFE progress workload=\S+ counter=(\d+)/g)];
  return m.length ? Number(m[m.length - 1]![1]) : null;
}

t.test('redis-server killed during checkpointing: no half version, the sidecar carries on, recovery works', async (t) => {
  const srv = await testRedis(t, 'always');
  const env = cliEnv(t);
  const serial = join(tmpdir(), `migsafe-rkill-${process.pid}.serial`);
  const pidfile = join(tmpdir(), `migsafe-rkill-${process.pid}.pid`);
  const run = startOwnedCli(
    t,
    ['run', '--vm', 'rk', '--redis', srv.url, '--interval', '400', '--pidfile', pidfile, '--',
      ...guestQemuArgs({ workload: 'wset', serialLog: serial, workloadMiB: 8 })],
    env,
    pidfile,
  );
  let qemuPid = 0;
  const redis = testClient(t, srv.url);
  const store = new CheckpointStore(redis, 'rk');
  await waitForConsole(serial, (c) => c.verifiedCount >= 2, 90_000);
  await waitFor('three versions', 90_000, async () => ((await store.committed()).length >= 3 ? true : undefined));
  qemuPid = await run.qemuPid();
  redis.disconnect();

  // Kill the store while rounds are being written, leave it down for a few rounds.
  process.kill(srv.pid, 'SIGKILL');
  const failuresBefore = (run.err().match(/round failed/g) ?? []).length;
  await waitFor('rounds to fail', 30_000, async () =>
    (run.err().match(/round failed/g) ?? []).length > failuresBefore ? true : undefined,
  );
  const again = await startRedisServer({ dir: srv.dir, port: Number(srv.url.split(':').pop()), appendfsync: 'always' });
  t.teardown(() => again.stop());
  const r2 = testClient(t, again.url);
  const s2 = new CheckpointStore(r2, 'rk');
  const afterRestart = await s2.committed();
  t.ok(afterRestart.length >= 3, `committed versions survived the restart: ${afterRestart.join(',')}`);
  const metas = await Promise.all(afterRestart.map((v) => s2.meta(v)));
  t.ok(metas.every((m) => m !== null), 'every committed version has its metadata');
  const pending = (await r2.smembers(vmKeys('rk').pending)).map(Number);
  t.same(pending.filter((v) => afterRestart.includes(v)), [], 'a half-written (pending) version is never among the committed');

  // The sidecar reconnects by itself and commits again, starting over with a full version.
  const next = await waitFor('a version after the restart', 60_000, async () => {
    const h = await s2.head();
    return h > afterRestart[afterRestart.length - 1]! ? h : undefined;
  });
  const m = await s2.meta(next);
  t.ok(m, 'the new version is committed');
  t.equal(run.child.exitCode, null, 'the sidecar did not give up');

  // And the whole chain still recovers the guest.
  process.kill(qemuPid, 'SIGKILL');
  t.equal(await run.exited, 3);
  const k = Number(findProgressInImage((await loadImage(s2, await planRestore(s2))).image));
  t.ok(k >= 1, `the newest version holds progress counter ${k}`);
  const rec = await runCli(['recover', '--vm', 'rk', '--redis', again.url, '--detach'], env);
  t.equal(rec.code, 0, rec.stderr.split('\n').slice(-3).join(' '));
  qemuPid = run.own((JSON.parse(rec.stdout.trim().split('\n').pop()!) as { pid: number }).pid);
  const after = await waitForConsole(serial, (c) => c.verifiedCount >= 2 || c.errors.length > 0, 90_000);
  t.same(after.errors.map((e) => e.raw), [], 'memory intact after recovery');
  const first = after.progress[0]!.counter;
  t.ok(first === k || first === k + 1, `resumed at ${first}: from the checkpoint (${k})`);
});
