// The fault-injection matrix (npm run test:faults; also part of npm test): a VM is migrated
// between two hosts (network namespaces) while one of them, or the network, or Redis fails at
// a random moment. Every run must end with exactly one running VM whose workload verifies its
// own memory, and the UDP stream the guest sends to a peer on the store host must hold no
// datagram that the recovered VM's state does not explain (output commit).
//
// MIGSAFE_FAULT_RUNS=N runs each scenario N times (default 2); MIGSAFE_FAULT_SCENARIOS=a,b
// picks scenarios. The table is printed at the end (and written to $MIGSAFE_FAULT_TABLE).
import t, { type Test } from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ensureGuestBuilt, findProgressInImage, guestQemuArgs, parseConsole, waitForConsole } from '../helpers/guest.js';
import { appendSerial, createCluster, peerDatagrams, qemuPidsIn, PEER_PORT, type Cluster, type HostName } from '../helpers/hosts.js';
import { gateNetdev } from '../../src/ha/gate.js';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import { connectRedis } from '../../src/store/redis-server.js';
import { loadImage, planRestore } from '../../src/store/reader.js';

ensureGuestBuilt();

type Scenario = 'source-precopy' | 'source-postcopy' | 'destination-postcopy' | 'network-postcopy' | 'redis-restart' | 'destination-precopy';
const ALL: Scenario[] = ['source-precopy', 'source-postcopy', 'destination-postcopy', 'network-postcopy', 'redis-restart', 'destination-precopy'];
const RUNS = Number(process.env.MIGSAFE_FAULT_RUNS ?? 2);
const PICK = process.env.MIGSAFE_FAULT_SCENARIOS?.split(',') as Scenario[] | undefined;
const SCENARIOS = PICK ?? ALL;

interface RunResult {
  scenario: Scenario;
  recovered: boolean;
  recoveryMs: number | null;
  /** Datagrams the peer saw that the surviving VM's state does not explain. */
  unexplained: number;
  /** Progress the guest had made past the state it resumed from (rolled back, never seen outside). */
  rolledBack: number;
  where: string;
}
const results: RunResult[] = [];

function guest(c: Cluster, serial: string): string[] {
  return appendSerial(
    guestQemuArgs({
      workload: 'udp',
      memMiB: 128,
      serialLog: serial,
      extraAppend: 'migsafe.pps=20',
      netdev: { netdev: gateNetdev(), ip: '192.168.77.2/24', gw: '192.168.77.1', peer: `${c.hosts.sto.ip}:${PEER_PORT}` },
    }),
  );
}

async function waitFor<T>(what: string, ms: number, f: () => T | undefined | Promise<T | undefined>): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(100);
  }
}

const rnd = (lo: number, hi: number) => Math.round(lo + Math.random() * (hi - lo));

function killHost(c: Cluster, h: HostName): number {
  const now = Date.now();
  for (const pid of qemuPidsIn(c.hosts[h])) process.kill(pid, 'SIGKILL');
  c.agents[h]?.child.kill('SIGKILL');
  return now;
}

function lastCounter(text: string): number {
  const p = parseConsole(text);
  const udp = [...text.matchAll(/MIGSAFE progress workload=udp counter=(\d+)/g)];
  return udp.length ? Number(udp[udp.length - 1]![1]) : (p.lastCounter ?? 0);
}

async function oneRun(t: Test, scenario: Scenario, run: number): Promise<void> {
  const c = await createCluster({ t });
  const serial = join(c.dir, 'serial.log');
  const mode = scenario.endsWith('postcopy') ? 'postcopy' : 'precopy';
  c.startAgent('dst');
  c.startAgent('src', ['--interval', '600', '--vm', 'f1', '--', ...guest(c, serial)]);
  await waitForConsole(serial, (p) => p.verifiedCount >= 2, 120_000);
  await waitFor('a committed FIC version', 60_000, () => ((c.status('src')?.vms[0]?.head ?? 0) > 0 ? true : undefined));
  const mig = c.cli('src', [
    'migrate', '--vm', 'f1', '--to', c.agents.dst!.addr, '--redis', c.redisUrl, '--mode', mode,
    '--bandwidth', '6', '--postcopy-bandwidth', '6',
  ]);
  // The moment: a random point of the phase under test.
  if (mode === 'precopy') {
    await waitFor('pre-copy to start', 60_000, () =>
      c.status('src')?.vms[0]?.events.some((e) => e.includes('source migration status active')) ? true : undefined,
    );
  } else {
    await waitFor('post-copy with the VM at the destination', 60_000, () =>
      c.status('dst')?.vms[0]?.role === 'postcopy-dst' ? true : undefined,
    );
  }
  await sleep(rnd(300, mode === 'precopy' ? 3000 : 2500));
  const phaseStillOn =
    mode === 'precopy' ? c.status('src')?.vms[0]?.role === 'migrating-src' : c.status('dst')?.vms[0]?.role === 'postcopy-dst';
  t.ok(phaseStillOn, `run ${run}: the failure hits during ${mode}`);
  const consoleBefore = readFileSync(serial, 'latin1');
  let failedAt = Date.now();
  let survivor: HostName = 'dst';
  switch (scenario) {
    case 'source-precopy':
    case 'source-postcopy':
      failedAt = killHost(c, 'src');
      survivor = 'dst';
      break;
    case 'destination-postcopy':
    case 'destination-precopy':
      failedAt = killHost(c, 'dst');
      survivor = 'src';
      break;
    case 'network-postcopy':
      c.hosts.cut('dst');
      survivor = 'src';
      break;
    case 'redis-restart':
      await c.restartRedis();
      survivor = 'dst';
      break;
  }
  const expectRecovery = scenario !== 'redis-restart' && scenario !== 'destination-precopy';
  // The outcome: the survivor owns the VM.
  const st = await waitFor(`${survivor} to own the VM`, 120_000, () => {
    const s = c.status(survivor)?.vms[0];
    return s?.role === 'owner' && s.pid > 0 && (!expectRecovery || s.recoveries.length > 0) ? s : undefined;
  });
  const migRes = await mig;
  if (scenario === 'redis-restart') t.equal(migRes.code, 0, `run ${run}: the migration completes across a Redis restart`);
  if (scenario === 'destination-precopy') t.match(migRes.stdout, /"status":"(cancelled|failed)"/, `run ${run}: the migration is called off`);
  // Settle: fencing and the other side's clean-up.
  await sleep(2500);
  const pids = [...qemuPidsIn(c.hosts.src), ...qemuPidsIn(c.hosts.dst)];
  t.equal(pids.length, 1, `run ${run}: exactly one QEMU runs (${pids.join(',')})`);
  t.equal((survivor === 'src' ? qemuPidsIn(c.hosts.src) : qemuPidsIn(c.hosts.dst)).length, 1, `run ${run}: on ${survivor}`);

  const mark = readFileSync(serial, 'latin1').length;
  const after = await waitForConsole(serial, (_p, text) => {
    const q = parseConsole(text.slice(mark));
    return q.verifiedCount >= 2 || q.errors.length > 0;
  }, 120_000);
  const tail = parseConsole(readFileSync(serial, 'latin1').slice(mark));
  t.same(tail.errors.map((e) => e.raw), [], `run ${run}: the surviving guest verifies its memory`);
  void after;

  let unexplained = 0;
  let rolledBack = 0;
  let recoveryMs: number | null = null;
  if (expectRecovery) {
    const rec = st.recoveries[st.recoveries.length - 1]!;
    recoveryMs = rec.at - failedAt;
    // What the recovered state says the guest had sent: counter k in its progress record.
    const redis = connectRedis(join(c.redisDir, 'redis.sock'));
    try {
      const store = new CheckpointStore(redis, 'f1');
      const img = await loadImage(store, await planRestore(store, rec.fromVersion));
      const k = Number(findProgressInImage(img.image));
      const recoveryStarted = rec.at - rec.ms;
      const seenBefore = peerDatagrams(c.peerLog).filter((d) => d.at < recoveryStarted);
      unexplained = seenBefore.filter((d) => d.counter > k).length;
      rolledBack = Math.max(0, lastCounter(consoleBefore) - k);
      t.equal(unexplained, 0, `run ${run}: every datagram the peer saw before recovery (max ${Math.max(0, ...seenBefore.map((d) => d.counter))}) is explained by version ${rec.fromVersion} (counter ${k})`);
    } finally {
      redis.disconnect();
    }
  }
  results.push({ scenario, recovered: true, recoveryMs, unexplained, rolledBack, where: survivor });
}


for (const scenario of SCENARIOS) {
  for (let run = 1; run <= RUNS; run++) {
    t.test(`${scenario}, run ${run}`, async (t) => {
      const before = results.length;
      try {
        await oneRun(t, scenario, run);
      } finally {
        if (results.length === before) results.push({ scenario, recovered: false, recoveryMs: null, unexplained: NaN, rolledBack: NaN, where: '-' });
      }
    });
  }
}

t.teardown(() => {
  const rows = SCENARIOS.map((s) => {
    const rs = results.filter((r) => r.scenario === s);
    const ok = rs.filter((r) => r.recovered);
    const times = ok.map((r) => r.recoveryMs).filter((x): x is number => x !== null);
    const lost = ok.reduce((a, r) => a + (Number.isNaN(r.unexplained) ? 0 : r.unexplained), 0);
    const rb = ok.map((r) => r.rolledBack);
    return [
      s,
      String(rs.length),
      `${ok.length}/${rs.length}`,
      times.length ? `${(Math.min(...times) / 1000).toFixed(1)}–${(Math.max(...times) / 1000).toFixed(1)} s` : 'n/a (no recovery needed)',
      `${lost} datagrams${rb.length ? ` (state rolled back ${Math.min(...rb)}–${Math.max(...rb)}, never seen outside)` : ''}`,
    ];
  });
  const head = ['scenario', 'runs', 'recovered', 'recovery time', 'data lost'];
  const table = [
    `| ${head.join(' | ')} |`,
    `|${head.map(() => '---').join('|')}|`,
    ...rows.map((r) => `| ${r.join(' | ')} |`),
  ].join('\n');
  process.stderr.write(`\nfault matrix:\n${table}\n`);
  if (process.env.MIGSAFE_FAULT_TABLE) writeFileSync(process.env.MIGSAFE_FAULT_TABLE, table + '\n');
});
