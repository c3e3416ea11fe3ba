// The patched QEMU (qemu-patches/, built by scripts/setup.sh): its fault-tolerance dirty bitmap
// names every page the guest changed, without a storm of phantom pages; and the sidecar on it
// checkpoints from the bitmap and recovers a killed guest with its memory intact.
import t from 'tap';
import { mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { native } from '../../src/kernel/native.js';
import { FtClient } from '../../src/qemu/ft-client.js';
import { launchQemu, createRamFile, vmPaths } from '../../src/qemu/launch.js';
import { QmpClient } from '../../src/qemu/qmp.js';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import { ensureGuestBuilt, guestQemuArgs, waitForConsole } from '../helpers/guest.js';
import { testClient, testRedis } from '../helpers/redis.js';
import { cliEnv, killQuietly, runCli, startOwnedCli } from '../helpers/cli.js';
import { patchedQemu } from '../helpers/patched-qemu.js';

ensureGuestBuilt();
const QEMU = patchedQemu();

t.test('the bitmap names every changed page, and few others', async (t) => {
  const dir = join('/dev/shm', `migsafe-bitmap-${process.pid}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { mode: 0o700 });
  const paths = vmPaths(dir, 'g');
  const ramBytes = 256 << 20;
  createRamFile(paths.ram, ramBytes);
  const serial = join(dir, 'serial');
  const argv = guestQemuArgs({ workload: 'wset', serialLog: serial, workloadMiB: 16, qemu: QEMU });
  const q = launchQemu({ argv, ramBytes, paths, ft: true });
  t.teardown(() => {
    killQuietly(q.pid);
    rmSync(dir, { recursive: true, force: true });
  });
  const qmp = await QmpClient.connect(paths.qmp, 30_000);
  t.teardown(() => qmp.close());
  await waitForConsole(serial, (c) => c.verifiedCount >= 1, 120_000);
  const ft = await FtClient.connect(paths.ft);
  t.teardown(() => ft.close());
  const block = ft.blocks.find((b) => b.shared && b.length === ramBytes)!;
  t.ok(block, 'QEMU reports the shared guest RAM block');
  const n = native();
  const ram = n.mapFile(paths.ram, ramBytes, false);

  await qmp.execute('stop');
  ft.start();
  const snapshot = Buffer.from(ram);
  await qmp.execute('cont');
  let changedTotal = 0;
  let reportedTotal = 0;
  for (let round = 0; round < 5; round++) {
    await sleep(400);
    await qmp.execute('stop');
    await ft.harvest();
    const reported = new Set(ft.dirtyPages(block));
    const changed = n.scanDirty(ram, snapshot);
    const missing = [...changed].filter((p) => !reported.has(p));
    t.same(missing, [], `round ${round}: all ${changed.length} changed pages reported (${reported.size} reported)`);
    changedTotal += changed.length;
    reportedTotal += reported.size;
    ram.copy(snapshot);
    await qmp.execute('cont');
  }
  t.ok(changedTotal > 1000, `the guest changed pages (${changedTotal})`);
  // A page can be written without changing (same value); a storm would be far more.
  t.ok(reportedTotal <= 3 * changedTotal + 2000, `no phantom storm: ${reportedTotal} reported for ${changedTotal} changed`);
});

t.test('the sidecar on the patched QEMU uses the bitmap and recovers the guest', async (t) => {
  const srv = await testRedis(t);
  const env = cliEnv(t);
  const serial = join(tmpdir(), `migsafe-bitmap-run-${process.pid}.serial`);
  const pidfile = join(tmpdir(), `migsafe-bitmap-run-${process.pid}.pid`);
  const run = startOwnedCli(
    t,
    ['run', '--vm', 'bm', '--redis', srv.url, '--interval', '500', '--dirty-source', 'bitmap', '--pidfile', pidfile, '--',
      ...guestQemuArgs({ workload: 'wset', serialLog: serial, workloadMiB: 16, qemu: QEMU })],
    env,
    pidfile,
  );
  let qemuPid = 0;
  await waitForConsole(serial, (c) => c.verifiedCount >= 2, 120_000);
  const store = new CheckpointStore(testClient(t, srv.url), 'bm');
  const head0 = await store.head();
  for (let i = 0; i < 600 && (await store.head()) < head0 + 3; i++) await sleep(200);
  qemuPid = await run.qemuPid();
  process.kill(qemuPid, 'SIGKILL');
  t.equal(await run.exited, 3);
  t.match(run.err(), /dirty pages from QEMU's fault-tolerance dirty bitmap/);
  const metas = await store.metas();
  t.ok(metas.length >= 3 && metas.every((m) => m.dirtySource === 'bitmap'), 'versions record dirtySource bitmap');
  t.ok(metas.slice(1).some((m) => m.pages < 65536 / 2), 'later versions send a fraction of RAM');

  const rec = await runCli(['recover', '--vm', 'bm', '--redis', srv.url, '--detach'], env);
  t.equal(rec.code, 0, rec.stderr.split('\n').slice(-2).join(' '));
  qemuPid = run.own((JSON.parse(rec.stdout.trim().split('\n').pop()!) as { pid: number }).pid);
  const after = await waitForConsole(serial, (c) => c.verifiedCount >= 2 || c.errors.length > 0, 120_000);
  t.same(after.errors.map((e) => e.raw), [], 'the recovered guest finds its memory intact');
  t.ok(after.progress[0]!.counter > 1, `resumed at counter ${after.progress[0]!.counter}, not restarted`);
  killQuietly(qemuPid);
});
