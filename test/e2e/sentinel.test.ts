// A store that is not a single machine: a primary, two replicas and three Sentinels, all real
// redis-server processes on loopback. The primary is killed with SIGKILL under load; Sentinel
// promotes a replica; writers reconnect through the sentinels and go on, and with
// --durability replicas:1 no version reported committed is missing afterwards.
import t from 'tap';

import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import { parseCodec } from '../../src/store/frame.js';
import { settleDurability } from '../../src/store/durability.js';
import { planRestore } from '../../src/store/reader.js';
import { connectRedis } from '../../src/store/redis-server.js';
import { sentinelTopology, portOf } from '../helpers/sentinel.js';
import { waitFor } from '../helpers/wait.js';
import { ensureGuestBuilt, guestQemuArgs, waitForConsole } from '../helpers/guest.js';
import { alive, cliEnv, runCli, startOwnedCli } from '../helpers/cli.js';

ensureGuestBuilt();
const codec = parseCodec('none');

async function smallVersion(store: CheckpointStore, parent: number) {
  const p = await store.begin(parent);
  await p.addPages(Buffer.alloc(0), codec);
  await p.setDevice(Buffer.from('dev'), codec);
  return p.commit({ pages: 0, bytesRaw: 0, pauseMs: 0, deviceStateBytes: 3, dirtySource: 'scan', codec: 'none:0', stage1Pages: 0, stage2Pages: 0 });
}

t.test('store: the primary killed, a replica promoted, the same connection commits on', async (t) => {
  const topo = await sentinelTopology(t, { replicas: 2 });
  const redis = connectRedis(topo.url, { retry: true });
  t.teardown(() => redis.disconnect());
  const store = new CheckpointStore(redis, 's1');
  await store.init(['q'], 4096 * 4);
  store.setDurability(await settleDurability(redis, { kind: 'replicas', replicas: 1, timeoutMs: 1000 }, false, topo.url));
  const reported: number[] = [];
  for (let i = 0; i < 5; i++) reported.push((await smallVersion(store, await store.head())).version);

  const before = portOf(topo.primary.url);
  process.kill(topo.primary.pid, 'SIGKILL');
  const after = await waitFor('a replica to be promoted', 60_000, async () => {
    const p = await topo.primaryPort();
    return p !== before ? p : undefined;
  });
  t.ok(topo.replicas.some((r) => portOf(r.url) === after), `the sentinels promoted a replica (port ${after})`);
  // Commits fail while there is no primary, then go on at the new one.
  const next = await waitFor('a commit at the new primary', 60_000, async () => {
    try {
      return await smallVersion(store, await store.head());
    } catch {
      return undefined;
    }
  });
  t.ok(next.version > reported[reported.length - 1]!, `version ${next.version} committed after the failover`);
  const committed = await store.committed();
  t.same(
    reported.filter((v) => !committed.includes(v)),
    [],
    `every version reported before the failover is there (${reported.join(',')} in ${committed.join(',')})`,
  );
  t.equal((await planRestore(store)).target.version, next.version, 'the newest version restores');
});

t.test('run through Sentinel: the primary killed under a checkpointing guest; nothing reported is lost, the VM recovers', async (t) => {
  const topo = await sentinelTopology(t, { replicas: 2 });
  const env = cliEnv(t);
  const vm = 's2';
  const serial = join(tmpdir(), `migsafe-sentinel-${process.pid}.serial`);
  const pidfile = join(tmpdir(), `migsafe-sentinel-${process.pid}.pid`);
  const run = startOwnedCli(
    t,
    [
      'run', '--vm', vm, '--redis', topo.url, '--interval', '500', '--durability', 'replicas:1:1000', '--compact-every', '0',
      '--pidfile', pidfile, '--', ...guestQemuArgs({ workload: 'wset', serialLog: serial, workloadMiB: 2 }),
    ],
    env,
    pidfile,
  );
  let qemuPid = await run.qemuPid();
  await waitForConsole(serial, (c) => c.verifiedCount >= 1, 90_000);
  const reportedVersions = () => [...run.err().matchAll(/version (\d+) committed/g)].map((m) => Number(m[1]));
  await waitFor('three reported versions', 90_000, () => (reportedVersions().length >= 3 ? true : undefined));
  const shown = await runCli(['inspect', '--vm', vm, '--redis', topo.url, '--json'], env);
  t.equal(shown.code, 0, 'inspect reads the store through the sentinels');
  const inspected = (JSON.parse(shown.stdout) as { versions: { version: number }[] }).versions.map((v) => v.version);

  const before = portOf(topo.primary.url);
  process.kill(topo.primary.pid, 'SIGKILL');
  const reportedThen = reportedVersions();
  await waitFor('a replica to be promoted', 60_000, async () => ((await topo.primaryPort()) !== before ? true : undefined));
  const last = reportedThen[reportedThen.length - 1]!;
  await waitFor('a version reported after the failover', 90_000, () => (reportedVersions().some((v) => v > last + 1) ? true : undefined));
  t.ok(alive(qemuPid), 'the guest ran on through the failover');
  t.notMatch(run.err(), /FENCED|lease was taken/, 'the writer kept its lease');

  const shownAfter = await runCli(['inspect', '--vm', vm, '--redis', topo.url, '--json'], env);
  const present = (JSON.parse(shownAfter.stdout) as { versions: { version: number }[] }).versions.map((v) => v.version);
  t.same(inspected.filter((v) => !present.includes(v)), [], `every version inspect had shown is there (${inspected.join(',')})`);
  t.same(reportedThen.filter((v) => !present.includes(v)), [], `and every version reported committed before the kill (${reportedThen.join(',')})`);

  // The VM fails too: it comes back from the newest version, out of the promoted store.
  process.kill(qemuPid, 'SIGKILL');
  t.equal(await run.exited, 3, 'the sidecar reports the dead QEMU');
  const rec = await runCli(['recover', '--vm', vm, '--redis', topo.url, '--detach', '--pidfile', pidfile], env);
  t.equal(rec.code, 0, `recover exits 0 (${rec.stderr.trim().split('\n').pop()})`);
  const info = JSON.parse(rec.stdout.trim().split('\n').pop()!) as { version: number; pid: number };
  qemuPid = run.own(info.pid);
  t.ok(info.version >= Math.max(...reportedVersions()), `restored version ${info.version}, the newest reported`);
  // The recovered QEMU writes its console file anew.
  const after = await waitForConsole(serial, (c) => c.verifiedCount >= 1 || c.errors.length > 0, 120_000);
  t.same(after.errors.map((e) => e.raw), [], 'the recovered guest finds its memory intact');
});
