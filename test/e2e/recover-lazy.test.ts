// Lazy recovery on a real guest: checkpointed by the real CLI, its QEMU killed with SIGKILL,
// `migsafe recover --lazy` brings it back as a post-copy migration whose source is migsafe —
// the guest runs before its memory is all in, and its memory self-check passes. Then a page
// damaged in the store: the lazy recovery kills the QEMU it started and names the page.
import t from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitFor } from '../helpers/wait.js';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import { vmKeys } from '../../src/store/keys.js';
import { decodeFrame, encodeFrame } from '../../src/store/frame.js';
import { planRestore } from '../../src/store/reader.js';
import { batchRecords } from '../../src/kernel/page-delta.js';
import { RecordKind } from '../../src/kernel/native.js';
import { ensureGuestBuilt, guestQemuArgs, waitForConsole } from '../helpers/guest.js';
import { testClient, testRedis } from '../helpers/redis.js';
import { alive, cliEnv, killQuietly, runCli, startCli } from '../helpers/cli.js';

ensureGuestBuilt();

const QEMU = process.env.MIGSAFE_LAZY_QEMU ?? 'qemu-system-x86_64';

t.test(`kill -9 QEMU, recover --lazy (${QEMU}): the guest runs before its memory is resident, and its memory is intact`, async (t) => {
  const srv = await testRedis(t);
  const env = cliEnv(t);
  const vm = 'e2e-lazy';
  const serial = join(tmpdir(), `migsafe-${vm}-${process.pid}.serial`);
  const pidfile = join(tmpdir(), `migsafe-${vm}-${process.pid}.pid`);
  const argv = guestQemuArgs({ workload: 'wset', serialLog: serial, workloadMiB: 32, qemu: QEMU });
  const run = startCli(['run', '--vm', vm, '--redis', srv.url, '--interval', '700', '--pidfile', pidfile, '--', ...argv], env);
  let qemuPid = 0;
  t.teardown(() => {
    killQuietly(run.child.pid);
    killQuietly(qemuPid);
  });
  await waitFor('the pidfile', 30_000, async () => (existsSync(pidfile) ? true : undefined));
  qemuPid = Number(readFileSync(pidfile, 'utf8'));
  await waitForConsole(serial, (c) => c.verifiedCount >= 2, 120_000);
  const redis = testClient(t, srv.url);
  const store = new CheckpointStore(redis, vm);
  const headThen = await store.head();
  await waitFor('two more committed versions', 90_000, async () => ((await store.head()) >= headThen + 2 ? true : undefined));

  process.kill(qemuPid, 'SIGKILL');
  t.equal(await run.exited, 3, 'the sidecar reports the dead QEMU');
  const plan = await planRestore(store);

  const rec = await runCli(['recover', '--vm', vm, '--redis', srv.url, '--lazy', '--detach', '--pidfile', pidfile, ...(process.env.MIGSAFE_LAZY_RECOVER_QEMU ? ['--qemu-binary', process.env.MIGSAFE_LAZY_RECOVER_QEMU] : [])], env);
  t.equal(rec.code, 0, `recover --lazy exits 0 (${rec.stderr.trim().split('\n').pop()})`);
  if (rec.code !== 0) {
    const log = join(env.MIGSAFE_RUN_DIR!, `${vm}.qemu.log`);
    t.comment(`QEMU's log:\n${existsSync(log) ? readFileSync(log, 'utf8').slice(-3000) : '(none)'}\nstderr:\n${rec.stderr.slice(-4000)}`);
  }
  const info = JSON.parse(rec.stdout.trim().split('\n').pop()!) as {
    version: number;
    pid: number;
    lazy: boolean;
    recoveryMs: number;
    runningMs: number;
    residentMs: number;
    pageRequests: number;
    index: string;
    faultFrames: number;
    framesBeforeRunning: number;
    frames: number;
  };
  qemuPid = info.pid;
  t.equal(info.version, plan.target.version, 'restored the newest committed version');
  t.equal(info.lazy, true);
  t.ok(info.runningMs > 0 && info.runningMs < info.residentMs, `running after ${info.runningMs} ms, resident after ${info.residentMs} ms`);
  t.equal(info.recoveryMs, info.runningMs, 'recoveryMs is the wait for a running guest');
  t.ok(info.pageRequests > 0, `the guest faulted on ${info.pageRequests} page(s) that were served on request`);
  t.ok(alive(qemuPid), 'the recovered QEMU runs');
  t.equal(info.index, 'used', 'the versions written by this migsafe have page indexes, and they were used');
  t.ok(info.faultFrames > 0, `${info.faultFrames} frame(s) fetched out of turn for faults (${info.framesBeforeRunning} frame reads before the guest ran, ${info.frames} frames in all)`);

  const after = await waitForConsole(serial, (c) => c.verifiedCount >= 2 || c.errors.length > 0 || c.died, 120_000);
  t.same(after.errors.map((e) => e.raw), [], 'the recovered guest finds its memory intact (errors=0)');
  t.ok(after.verifiedCount >= 2, `verified ${after.verifiedCount} time(s) after the recovery`);
  killQuietly(qemuPid);
  await waitFor('the recovered QEMU to die', 10_000, async () => (alive(qemuPid) ? undefined : true));

  // Eager recovery of the same version from the same store, for comparison.
  const eager = await runCli(['recover', '--vm', vm, '--redis', srv.url, '--detach'], env);
  t.equal(eager.code, 0, 'eager recovery of the same version works too');
  const e = JSON.parse(eager.stdout.trim().split('\n').pop()!) as { pid: number; recoveryMs: number; loadMs: number };
  killQuietly(e.pid);
  t.comment(`same store, same run: eager recoveryMs ${e.recoveryMs} (read+verify ${e.loadMs}); lazy runningMs ${info.runningMs}, residentMs ${info.residentMs}`);
  await waitFor('the eager QEMU to die', 10_000, async () => (alive(e.pid) ? undefined : true));

  // The same store as an older migsafe left it: no page indexes. Lazy recovery reads whole lists.
  const k = vmKeys(vm);
  for (const m of plan.chain) await redis.multi().hdel(k.version(m.version), 'indexBytes').del(k.index(m.version)).exec();
  if (plan.base) await redis.multi().hdel(k.version(plan.base), 'baseIndexBytes').del(k.baseIndex).exec();
  const old = await runCli(['recover', '--vm', vm, '--redis', srv.url, '--lazy', '--detach', '--pidfile', pidfile], env);
  t.equal(old.code, 0, `recover --lazy of a store without page indexes exits 0 (${old.stderr.trim().split('\n').pop()})`);
  const o = JSON.parse(old.stdout.trim().split('\n').pop()!) as { pid: number; index: string; faultFrames: number; runningMs: number };
  qemuPid = o.pid;
  t.equal(o.index, 'not used', 'no index: not used');
  t.equal(o.faultFrames, 0, 'nothing fetched out of turn');
  const afterOld = await waitForConsole(serial, (c) => c.verifiedCount >= 2 || c.errors.length > 0 || c.died, 120_000);
  t.same(afterOld.errors.map((x) => x.raw), [], 'recovered without indexes, the guest finds its memory intact');
  t.ok(afterOld.verifiedCount >= 2, `verified ${afterOld.verifiedCount} time(s) after it (its serial log starts anew)`);
  killQuietly(qemuPid);
  await waitFor('that QEMU to die', 10_000, async () => (alive(qemuPid) ? undefined : true));

  // A page damaged where no newer version covers it, inside a frame whose own checksum holds
  // (re-framed: as if it had been damaged before it was framed): only the page's CRC32C, checked
  // as the page is built, finds it — after QEMU was started for the lazy recovery.
  const bottom = plan.base ? { list: 'base' as const, key: vmKeys(vm).baseChunks, version: plan.base } : { list: plan.chain[0]!.version, key: vmKeys(vm).chunks(plan.chain[0]!.version), version: plan.chain[0]!.version };
  const ramPages = plan.vm.ramBytes / 4096;
  const newer = new Set<number>();
  for (const m of plan.base ? plan.chain : plan.chain.slice(1)) {
    const frames = await store.chunkRange(m.version, 0, -1);
    for (const [i, f] of frames.entries()) {
      const d = await decodeFrame(f, { kind: 'pages', bind: { vm, version: m.version, list: 'version', index: i }, maxRecords: ramPages }, 'test');
      for (const r of batchRecords(d.raw)) newer.add(r.page);
    }
  }
  const frames = await store.chunkRange(bottom.list, 0, -1);
  let damaged: { page: number; index: number } | undefined;
  for (let i = frames.length - 1; i >= 0 && !damaged; i--) {
    const bind = { vm, version: bottom.version, list: plan.base ? ('base' as const) : ('version' as const), index: i };
    const d = await decodeFrame(frames[i]!, { kind: 'pages', bind, maxRecords: ramPages }, 'test');
    const raw = Buffer.from(d.raw);
    for (const r of batchRecords(raw)) {
      if (newer.has(r.page) || r.kind !== RecordKind.Full) continue;
      r.payload[100] ^= 0x5a;
      await redis.lset(bottom.key, i, await encodeFrame('pages', raw, d.count, { codec: 'zstd', level: 1 }, bind));
      damaged = { page: r.page, index: i };
      break;
    }
  }
  t.ok(damaged, `damaged page ${damaged?.page} in chunk ${damaged?.index} of version ${bottom.version}`);
  const bad = await runCli(['recover', '--vm', vm, '--redis', srv.url, '--lazy', '--detach'], env);
  t.not(bad.code, 0, 'the lazy recovery fails');
  t.match(bad.stderr, new RegExp(`page ${damaged!.page} .*version ${bottom.version}`), 'the error names the page and its version');
  const killed = /QEMU \(pid (\d+)\) killed/.exec(bad.stderr);
  t.ok(killed, 'it says it killed the QEMU it had started');
  if (killed) await waitFor('that QEMU to be gone', 10_000, async () => (alive(Number(killed[1])) ? undefined : true));
});
