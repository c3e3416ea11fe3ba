// The fault-injection matrix (npm run test:faults; also part of npm test): a VM is migrated
// between two hosts (network namespaces) while one of them, or the network, or Redis fails at
// a random moment. Every run must end with exactly one running VM whose workload verifies its
// own memory, and the UDP stream the guest sends to a peer on the store host must hold no
// datagram that the recovered VM's state does not explain (output commit).
//
// One test file per scenario (test/faults/<scenario>.test.ts, so that each stays well inside
// tap's per-file timeout); MIGSAFE_FAULT_RUNS=N runs each scenario N times (default 2). Each
// The source agent SIGSTOPped past its lease during pre-copy (source-agent-stopped) is the
// fencing scenario: its QEMU runs on, the destination recovers, and when the agent wakes, its
// commits must be refused and its QEMU stopped; source-agent-killed SIGKILLs the source agent
// alone (its QEMU must die with it), source-agent-killed-mid-commit at a moment a version is begun
// and not yet committed (none may be left half there); store-failover SIGKILLs the store's primary (two replicas,
// three Sentinels; agents on redis+sentinel:// with --durability replicas:1) and checks that no
// version an agent reported is missing after the failover. Every run counts the versions committed after a recovery
// by anyone but the survivor (stale commits; versions carry their writer's lease). Each run's
// result is appended to $MIGSAFE_FAULT_RESULTS (default /tmp/migsafe-fault-results.jsonl);
// test/faults/table.ts prints the table (npm run test:faults does).
import t, { type Test } from 'tap';
import { appendFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { waitFor as waitForValue } from '../helpers/wait.js';
import { ensureGuestBuilt, findProgressInImage, parseConsole, waitForConsole } from '../helpers/guest.js';
import { patchedQemu } from '../helpers/patched-qemu.js';
import { udpGuestArgs, createCluster, peerDatagrams, qemuPidsIn, type Cluster, type HostName } from '../helpers/hosts.js';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import { vmKeys } from '../../src/store/keys.js';
import { connectRedis } from '../../src/store/redis-server.js';
import { loadImage, planRestore } from '../../src/store/reader.js';

ensureGuestBuilt();

export type Scenario =
  | 'source-precopy'
  | 'source-postcopy'
  | 'destination-postcopy'
  | 'network-postcopy'
  | 'redis-restart'
  | 'destination-precopy'
  | 'network-precopy'
  | 'source-agent-stopped'
  | 'source-agent-killed'
  | 'source-agent-killed-mid-commit'
  | 'store-failover';
export const SCENARIOS: Scenario[] = [
  'source-precopy',
  'source-postcopy',
  'destination-postcopy',
  'network-postcopy',
  'redis-restart',
  'destination-precopy',
  'network-precopy',
  'source-agent-stopped',
  'source-agent-killed',
  'source-agent-killed-mid-commit',
  'store-failover',
];
const RUNS = Number(process.env.MIGSAFE_FAULT_RUNS ?? 2);
const waitFor = <T>(what: string, ms: number, f: () => T | undefined | Promise<T | undefined>) => waitForValue(what, ms, f, 100);

export const RESULTS_FILE = process.env.MIGSAFE_FAULT_RESULTS ?? '/tmp/migsafe-fault-results.jsonl';

export interface RunResult {
  scenario: Scenario;
  recovered: boolean;
  recoveryMs: number | null;
  /** Datagrams the peer saw that the surviving VM's state does not explain. */
  unexplained: number;
  /** Progress the guest had made past the state it resumed from (rolled back, never seen outside). */
  rolledBack: number;
  /** Versions the source had reported committed that the store no longer has. */
  lostVersions?: number;
  /** Versions committed after the recovery's version by a writer other than the survivor (null: no recovery). */
  staleCommits?: number | null;
  /** The VM went on in the same QEMU (V-Recover's live recovery: missing pages filled from the store). */
  live?: boolean;
  where: string;
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
  const failover = scenario === 'store-failover';
  const c = await createCluster({ t, replicated: failover });
  const serial = join(c.dir, 'serial.log');
  const mode = scenario.endsWith('postcopy') ? 'postcopy' : 'precopy';
  // Post-copy runs on the patched QEMU (migsafe-postcopy-fill: live recovery at the destination).
  const qemu = mode === 'postcopy' ? patchedQemu() : undefined;
  // A failover takes down-after (1 s) plus the election: the lease must outlast it.
  const storeOpts = failover ? ['--durability', 'replicas:1:1000', '--lease-ttl', '8000'] : [];
  c.startAgent('dst', storeOpts);
  c.startAgent('src', [...storeOpts, '--interval', '600', '--vm', 'f1', '--', ...udpGuestArgs(c, serial, qemu)]);
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
  // The destination QEMU that runs the VM in post-copy (a live recovery must keep it).
  const postcopyPid = mode === 'postcopy' ? (c.status('dst')?.vms[0]?.pid ?? 0) : 0;
  await sleep(rnd(300, mode === 'precopy' ? 3000 : 2500));
  const phaseStillOn =
    mode === 'precopy' ? c.status('src')?.vms[0]?.role === 'migrating-src' : c.status('dst')?.vms[0]?.role === 'postcopy-dst';
  t.ok(phaseStillOn, `run ${run}: the failure hits during ${mode}`);
  const consoleBefore = readFileSync(serial, 'latin1');
  let failedAt = Date.now();
  // What the source had reported committed (its status file) when the failure hit.
  const reportedBefore = (c.status('src')?.vms[0]?.rounds ?? []).map((r) => r.version);
  let survivor: HostName = 'dst';
  /** source-agent-killed-mid-commit: the versions in flight when the sidecar was killed. */
  let midCommit: number[] = [];
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
    case 'network-precopy':
      c.hosts.cut('dst');
      survivor = 'src';
      break;
    case 'redis-restart':
      await c.restartRedis();
      survivor = 'dst';
      break;
    case 'store-failover': {
      process.kill(await c.store!.primaryPid(), 'SIGKILL');
      // Whether the migration still completes or is called off depends on when the store
      // returns: the side that owns the VM once it settled is the survivor.
      await mig;
      survivor = await waitFor('one side to own the VM after the failover', 120_000, () =>
        (['src', 'dst'] as const).find((h) => c.status(h)?.vms[0]?.role === 'owner' && (c.status(h)?.vms[0]?.pid ?? 0) > 0),
      );
      break;
    }
    case 'source-agent-killed':
      // The sidecar alone dies, its FIC rounds running (a commit may be in flight): its QEMU must
      // go with it, or it would run beside the copy the destination recovers.
      c.agents.src!.child.kill('SIGKILL');
      failedAt = Date.now();
      survivor = 'dst';
      break;
    case 'source-agent-killed-mid-commit': {
      // The sidecar dies with a version begun and not committed (in the store's pending set):
      // that version must never be half there — committed whole, or not at all.
      const redis = connectRedis(await c.storeSocket());
      try {
        const k = vmKeys('f1');
        midCommit = await waitFor('a commit in flight', 30_000, async () => {
          const p = await redis.smembers(k.pending);
          return p.length ? p.map(Number) : undefined;
        });
        c.agents.src!.child.kill('SIGKILL');
        failedAt = Date.now();
      } finally {
        redis.disconnect();
      }
      survivor = 'dst';
      break;
    }
    case 'source-agent-stopped':
      // Frozen, not dead: its QEMU runs on and its gate holds what the guest sends.
      c.agents.src!.child.kill('SIGSTOP');
      failedAt = Date.now();
      survivor = 'dst';
      break;
  }
  // Pre-copy losing its destination (or the network to it): the source never stopped the VM.
  const cancelled = scenario === 'destination-precopy' || scenario === 'network-precopy';
  const expectRecovery = scenario !== 'redis-restart' && !cancelled && !failover;
  // The outcome: the survivor owns the VM.
  const st = await waitFor(`${survivor} to own the VM`, 120_000, () => {
    const s = c.status(survivor)?.vms[0];
    return s?.role === 'owner' && s.pid > 0 && (!expectRecovery || s.recoveries.length > 0) ? s : undefined;
  }).catch((e: Error) => {
    // Say what the survivor saw: its status and the end of its agent's log.
    const file = c.agents[survivor]?.log;
    let log = '';
    try {
      log = file ? readFileSync(file, 'utf8') : '';
    } catch {
      /* no log */
    }
    throw new Error(`${e.message}; status ${JSON.stringify(c.status(survivor)?.vms[0])}; ${survivor} agent's log ends:\n${log.slice(-4000)}`);
  });
  if (scenario === 'source-agent-stopped') {
    // The destination runs the VM; the source agent wakes to a lease it no longer holds.
    c.agents.src!.child.kill('SIGCONT');
    await waitFor('the woken source agent to stop its QEMU', 60_000, () => (qemuPidsIn(c.hosts.src).length === 0 ? true : undefined));
  }
  const migRes = await mig;
  if (scenario === 'redis-restart') t.equal(migRes.code, 0, `run ${run}: the migration completes across a Redis restart`);
  if (failover) t.pass(`run ${run}: the migration ended (${survivor === 'dst' ? 'completed' : 'called off'}: ${migRes.stdout.trim().split('\n').pop() ?? ''} ${migRes.stderr.trim().split('\n').pop() ?? ''})`);
  // No version reported committed is lost, whatever failed (for store-failover: in the promoted store).
  const lost = await missingVersions(c, reportedBefore);
  t.ok(reportedBefore.length > 0, `run ${run}: versions were reported before the failure (${reportedBefore.length})`);
  t.same(lost, [], `run ${run}: every version reported before the failure is still in the store`);
  if (midCommit.length) {
    const whole = await versionsInFlight(c, midCommit);
    t.same(whole.torn, [], `run ${run}: of the versions in flight at the kill (${midCommit.join(', ')}), none is half there (${whole.committed.length ? `${whole.committed.join(', ')} committed whole` : 'none committed'})`);
  }
  if (cancelled || scenario === 'source-agent-stopped') t.match(migRes.stdout, /"status":"(cancelled|failed)"/, `run ${run}: the migration is called off`);
  if (scenario === 'destination-postcopy') t.match(migRes.stdout, /"status":"recovered-at-source"/, `run ${run}: migrate reports the recovery at the source`);
  if (scenario === 'network-precopy') {
    t.equal(st.recoveries.length, 0, `run ${run}: the source ran on without a recovery`);
    // The cut-off destination cannot reach the store: it never gets the lease, so its incoming
    // QEMU (which never ran the guest) must go once it gives up waiting for the lease.
    await waitFor('the cut-off destination to drop its incoming QEMU', 60_000, () =>
      qemuPidsIn(c.hosts.dst).length === 0 && c.status('dst')?.vms[0]?.role === 'none' ? true : undefined,
    );
    const dstEvents = c.status('dst')?.vms[0]?.events ?? [];
    t.notOk(
      dstEvents.some((e) => / role (owner|postcopy-dst|recovering) /.test(e)),
      `run ${run}: the destination never ran the VM (${dstEvents.filter((e) => / role /.test(e)).map((e) => e.split(' ').slice(1, 3).join(' ')).join(', ')})`,
    );
    t.equal(c.status('dst')?.vms[0]?.leaseToken ?? 0, 0, `run ${run}: the destination holds no lease`);
  }
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
  const live = scenario === 'source-postcopy';
  if (live) {
    // V-Recover: the VM goes on in the destination QEMU that ran post-copy; nothing rolls back.
    const rec = st.recoveries[st.recoveries.length - 1]!;
    recoveryMs = rec.at - failedAt;
    t.match(rec.why, /live/, `run ${run}: the recovery was live (${rec.why})`);
    t.ok(postcopyPid > 0, `run ${run}: the destination QEMU of post-copy is known (${postcopyPid})`);
    t.equal(st.pid, postcopyPid, `run ${run}: the VM still runs in the destination QEMU of post-copy`);
    t.same(qemuPidsIn(c.hosts.dst), [postcopyPid], `run ${run}: that QEMU is the only one there`);
    const text = readFileSync(serial, 'latin1');
    const later = text.slice(consoleBefore.length);
    const firstAfter = Number(/MIGSAFE progress workload=udp counter=(\d+)/.exec(later)?.[1] ?? -1);
    rolledBack = Math.max(0, lastCounter(consoleBefore) - firstAfter);
    t.ok(firstAfter >= 0, `run ${run}: the guest reports progress after the recovery`);
    t.equal(rolledBack, 0, `run ${run}: the guest did not roll back (counter ${lastCounter(consoleBefore)} before the kill, ${firstAfter} next)`);
    t.notMatch(later, /MIGSAFE boot|Linux version/, `run ${run}: the guest did not reboot`);
    // Output commit across the live recovery: what the peer has seen is explained by the newest
    // committed version (read after the peer log), arrives once, and none is missing.
    const seen = peerDatagrams(c.peerLog);
    const { version, counter: k } = await committedCounter(c);
    unexplained = seen.filter((d) => d.counter > k).length;
    t.equal(unexplained, 0, `run ${run}: every datagram the peer saw (max ${Math.max(0, ...seen.map((d) => d.counter))}) is explained by the newest version ${version} (counter ${k})`);
    const counters = seen.map((d) => d.counter);
    const distinct = new Set(counters);
    t.equal(distinct.size, counters.length, `run ${run}: no datagram reached the peer twice`);
    const lo = Math.min(...counters);
    const hi = Math.max(...counters);
    t.equal(distinct.size, hi - lo + 1, `run ${run}: no datagram is missing between ${lo} and ${hi}`);
  } else if (expectRecovery) {
    const rec = st.recoveries[st.recoveries.length - 1]!;
    recoveryMs = rec.at - failedAt;
    // What the recovered state says the guest had sent: counter k in its progress record.
    const { counter: k } = await committedCounter(c, rec.fromVersion);
    const recoveryStarted = rec.at - rec.ms;
    const seenBefore = peerDatagrams(c.peerLog).filter((d) => d.at < recoveryStarted);
    unexplained = seenBefore.filter((d) => d.counter > k).length;
    rolledBack = Math.max(0, lastCounter(consoleBefore) - k);
    t.equal(unexplained, 0, `run ${run}: every datagram the peer saw before recovery (max ${Math.max(0, ...seenBefore.map((d) => d.counter))}) is explained by version ${rec.fromVersion} (counter ${k})`);
    if (scenario === 'source-agent-stopped') {
      // The frozen source's gate must not let out, when it wakes, what no version explains.
      const fromSrc = peerDatagrams(c.peerLog).filter((d) => d.from === c.hosts.src.ip);
      const late = fromSrc.filter((d) => d.counter > k).length;
      unexplained += late;
      t.ok(fromSrc.length > 0, `run ${run}: the peer heard the source before it froze (${fromSrc.length} datagrams)`);
      t.equal(late, 0, `run ${run}: nothing the source let out, ever, is past version ${rec.fromVersion} (counter ${k})`);
    }
  } else {
    // No recovery (the VM ran on where it was): output commit still holds — what the peer has
    // seen (read first) is explained by the newest committed version (read after).
    const seen = peerDatagrams(c.peerLog);
    const { version, counter: k } = await committedCounter(c);
    unexplained = seen.filter((d) => d.counter > k).length;
    t.equal(unexplained, 0, `run ${run}: every datagram the peer saw (max ${Math.max(0, ...seen.map((d) => d.counter))}) is explained by the newest version ${version} (counter ${k})`);
  }
  let staleCommits: number | null = null;
  const from = st.recoveries[st.recoveries.length - 1]?.fromVersion;
  if ((live || expectRecovery) && from !== undefined) {
    const stale = await writtenAfter(c, from, survivor);
    staleCommits = stale.length;
    t.same(stale, [], `run ${run}: every version after ${from} was written by ${survivor}, the lease holder`);
  }
  record({ scenario, recovered: t.passing(), recoveryMs, unexplained, rolledBack, lostVersions: lost.length, staleCommits, where: survivor, live });
}


/** The guest's progress counter in a committed version (default: the newest), read and verified whole. */
async function committedCounter(c: Cluster, version?: number): Promise<{ version: number; counter: number }> {
  const redis = connectRedis(await c.storeSocket());
  try {
    const store = new CheckpointStore(redis, 'f1');
    const plan = await planRestore(store, version);
    return { version: plan.target.version, counter: Number(findProgressInImage((await loadImage(store, plan)).image)) };
  } finally {
    redis.disconnect();
  }
}

/** Versions after `from` whose writer (the lease they were committed under) is not host `by`. */
async function writtenAfter(c: Cluster, from: number, by: HostName): Promise<string[]> {
  const redis = connectRedis(await c.storeSocket());
  try {
    const metas = await new CheckpointStore(redis, 'f1').metas();
    return metas.filter((m) => m.version > from && !m.writer?.startsWith(`${by}|`)).map((m) => `${m.version} by ${m.writer ?? 'nobody'}`);
  } finally {
    redis.disconnect();
  }
}

/** Of the versions reported committed, those the store has lost (neither committed nor folded into the base). */
/** The versions in flight at a kill: committed ones must load whole; a torn one is committed and unreadable. */
async function versionsInFlight(c: Cluster, versions: number[]): Promise<{ committed: number[]; torn: string[] }> {
  const redis = connectRedis(await c.storeSocket());
  try {
    const store = new CheckpointStore(redis, 'f1');
    const committed = new Set(await store.committed());
    const out = { committed: [] as number[], torn: [] as string[] };
    for (const v of versions) {
      if (!committed.has(v)) continue;
      out.committed.push(v);
      try {
        await loadImage(store, await planRestore(store, v));
      } catch (e) {
        out.torn.push(`${v}: ${(e as Error).message}`);
      }
    }
    return out;
  } finally {
    redis.disconnect();
  }
}

async function missingVersions(c: Cluster, reported: number[]): Promise<number[]> {
  const redis = connectRedis(await c.storeSocket());
  try {
    const store = new CheckpointStore(redis, 'f1');
    const [committed, base] = [new Set(await store.committed()), await store.base()];
    return reported.filter((v) => v > base && !committed.has(v));
  } finally {
    redis.disconnect();
  }
}

function record(r: RunResult): void {
  appendFileSync(RESULTS_FILE, JSON.stringify(r) + '\n');
}

/** Registers RUNS runs of one scenario as tap subtests. */
export function scenarioTests(scenario: Scenario): void {
  for (let run = 1; run <= RUNS; run++) {
    t.test(`${scenario}, run ${run}`, async (t) => {
      let done = false;
      try {
        await oneRun(t, scenario, run);
        done = true;
      } finally {
        if (!done) record({ scenario, recovered: false, recoveryMs: null, unexplained: -1, rolledBack: -1, where: '-' });
      }
    });
  }
}
