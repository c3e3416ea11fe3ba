// E8's measurement (npm run eval -- --only E8): the latency and throughput of a request/response
// service in the guest while it is migrated post-copy, with event-based RIC, continuous RIC
// and without checkpointing (V-Recover Fig. 13–15).
//
// One cluster of three hosts (network namespaces, test/helpers/hosts.ts) per case, side by
// side: the guest runs the `serve` workload (a UDP service, test/guest/src/wl-serve.c) behind
// the agents' output gates, which pass requests to port SERVICE_PORT of the host running the
// VM into the guest (`migsafe agent --gate-in`) and hold its replies until the round that
// explains them commits. A client on the store host (bench/request-client.ts) sends requests at
// a fixed rate to both hosts and times every reply. The cases' migrations take turns (never two
// at once), ping-pong between the two hosts, as bench/migration.ts does.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ChildProcess } from 'node:child_process';
import { ensureGuestBuilt, guestQemuArgs, waitForConsole } from '../test/helpers/guest.js';
import { appendSerial, createCluster, PEER_PORT, type Cluster, type HostName } from '../test/helpers/hosts.js';
import { gateNetdev } from '../src/ha/gate.js';
import { waitFor } from '../src/util/wait.js';

/** The service's UDP port, in the guest and on each host (the gate's inbound port). */
export const SERVICE_PORT = 7007;
const GUEST_IP = '192.168.77.2';
const SETTLE_MS = 2000;
export const TIMEOUTS = ['--lease-ttl', '30000', '--hb-timeout', '10000'];
const CLIENT = join(dirname(fileURLToPath(import.meta.url)), 'request-client.js');

export type Case = 'event' | 'continuous' | 'none';
export const CASES: Record<Case, { label: string; agent: (ricMs: number, ficMs: number) => string[] }> = {
  event: { label: 'event-based RIC (--ric-event)', agent: (r, f) => ['--interval', String(f), '--max-time', '200', '--ric-interval', String(r), '--ric-event'] },
  continuous: { label: 'continuous RIC (--no-ric-event)', agent: (r, f) => ['--interval', String(f), '--max-time', '200', '--ric-interval', String(r), '--no-ric-event'] },
  none: { label: 'post-copy without RIC (--no-checkpoint)', agent: () => ['--no-checkpoint'] },
};

export interface LatencyOptions {
  cases: Case[];
  /** Migrations per case. */
  runs: number;
  /** Requests per second. */
  rate: number;
  /** Time measured before each migration starts and after it ends, ms. */
  beforeMs: number;
  afterMs: number;
  /** Migration bandwidth, MiB/s (pre-copy phase and post-copy pushes). */
  bandwidthMiBs: number;
  /** RIC's --ric-interval and FIC's --interval, ms. */
  ricIntervalMs: number;
  ficIntervalMs: number;
  memMiB: number;
  /** The serve workload's region (each request writes one random word of it). */
  workloadMiB: number;
  log: (s: string) => void;
}

export interface Request {
  case: Case;
  migration: number;
  /** Send time from this migration's start, ms. */
  t: number;
  /** Reply time minus send time, ms; null: no reply by the end of the run. */
  latencyMs: number | null;
}
export interface Reply {
  case: Case;
  migration: number;
  /** Receive time from this migration's start, ms. */
  t: number;
}
export interface Migration {
  case: Case;
  migration: number;
  from: HostName;
  to: HostName;
  /** From `migrate` to its end as the operator saw it, ms. */
  windowMs: number;
  qemuTotalMs: number;
  downtimeMs: number;
}
export interface RicRound {
  case: Case;
  migration: number;
  /** Round start from the migration's start, ms (when the status names it). */
  t?: number;
  pauseMs: number;
  replicationMs: number;
  trigger?: string;
}

interface Side {
  name: Case;
  c: Cluster;
  owner: HostName;
  client: ChildProcess;
  clientLog: string;
  windows: { start: number; end: number }[];
  seen: Set<number>;
  rounds: RicRound[];
}

async function setUp(name: Case, o: LatencyOptions): Promise<Side> {
  const c = await createCluster();
  const serial = join(c.dir, 'serial.log');
  const argv = appendSerial(
    guestQemuArgs({
      workload: 'serve',
      workloadMiB: o.workloadMiB,
      memMiB: o.memMiB,
      serialLog: serial,
      extraAppend: `migsafe.port=${SERVICE_PORT}`,
      netdev: { netdev: gateNetdev(), ip: `${GUEST_IP}/24`, gw: '192.168.77.1', peer: `${c.hosts.sto.ip}:${PEER_PORT}` },
    }),
  );
  // A longer lease and heartbeat timeout than the agent's 3 s and 1.5 s: on these 2 shared
  // cores (load 5–7) renewals and heartbeats came late — while RIC loaded its first image, and
  // while three guests' first full FIC rounds went to their stores — and agents fenced
  // themselves or took the other side for dead (trial runs at 16 MiB/s, and a run at a 10 s
  // lease beside a unit-test run; the report says so).
  const extra = [...CASES[name].agent(o.ricIntervalMs, o.ficIntervalMs), '--gate-in', `${GUEST_IP}:${SERVICE_PORT}`, ...TIMEOUTS];
  c.startAgent('dst', extra);
  c.startAgent('src', [...extra, '--vm', 'b1', '--', ...argv]);
  await waitForConsole(serial, (p) => p.verifiedCount >= 2, 180_000);
  const clientLog = join(c.dir, 'client.log');
  const client = c.hosts.spawn('sto', [process.execPath, CLIENT, String(o.rate), String(SERVICE_PORT), clientLog, c.hosts.src.ip, c.hosts.dst.ip], { stdio: 'ignore' });
  return { name, c, owner: 'src', client, clientLog, windows: [], seen: new Set(), rounds: [] };
}

/** RIC rounds on either host's status not seen before (versions are unique per VM). */
function collectRic(s: Side, migration: number): void {
  const start = s.windows[migration]!.start;
  for (const h of ['src', 'dst'] as const) {
    for (const r of (s.c.status(h)?.vms.flatMap((v) => v.rounds) ?? []) as { version: number; kind: string; pauseMs: number; replicationMs: number; trigger?: string; pausedAt?: number }[]) {
      if (r.kind !== 'ric' || s.seen.has(r.version)) continue;
      s.seen.add(r.version);
      s.rounds.push({ case: s.name, migration, t: r.pausedAt !== undefined ? r.pausedAt - start : undefined, pauseMs: r.pauseMs, replicationMs: r.replicationMs, trigger: r.trigger });
    }
  }
}

async function migrateOnce(s: Side, o: LatencyOptions): Promise<Migration> {
  const from = s.owner;
  const to: HostName = from === 'src' ? 'dst' : 'src';
  if (s.name !== 'none') await waitFor('a committed checkpoint at the owner', 60_000, () => ((s.c.status(from)?.vms[0]?.head ?? 0) > 0 ? true : undefined));
  // The replies held until the first commit leave at once: that burst is not the steady state.
  await sleep(SETTLE_MS + o.beforeMs);
  const start = Date.now();
  const r = await s.c.cli(from, ['migrate', '--vm', 'b1', '--to', s.c.agents[to]!.addr, '--redis', s.c.redisUrl, '--mode', 'postcopy', '--bandwidth', String(o.bandwidthMiBs), '--postcopy-bandwidth', String(o.bandwidthMiBs)]);
  const res = JSON.parse(r.stdout.trim().split('\n').pop() || '{}') as { status?: string; qemuTotalMs: number; downtimeMs: number };
  if (res.status !== 'completed') throw new Error(`${s.name}: post-copy migration ${from}→${to} did not complete: ${r.stderr.slice(-500)}`);
  const end = Date.now();
  s.windows.push({ start, end });
  await waitFor(`${to} to own the VM`, 60_000, () => (s.c.status(to)?.vms[0]?.role === 'owner' ? true : undefined));
  s.owner = to;
  await sleep(o.afterMs);
  collectRic(s, s.windows.length - 1);
  o.log(`E8: ${s.name.padEnd(10)} ${from}→${to}: ${end - start} ms, QEMU total ${res.qemuTotalMs} ms, downtime ${res.downtimeMs} ms`);
  return { case: s.name, migration: s.windows.length - 1, from, to, windowMs: end - start, qemuTotalMs: res.qemuTotalMs, downtimeMs: res.downtimeMs };
}

/** The client's log → requests and replies, each given to the migration it is nearest to. */
function parseClient(s: Side, o: LatencyOptions): { requests: Request[]; replies: Reply[] } {
  const sent = new Map<number, number>();
  const got = new Map<number, number>();
  for (const l of readFileSync(s.clientLog, 'utf8').split('\n')) {
    const [k, id, t] = l.split(' ');
    if (k === 's') sent.set(Number(id), Number(t));
    else if (k === 'r' && !got.has(Number(id))) got.set(Number(id), Number(t)); // a duplicate answer is not a second reply
  }
  // Each instant belongs to the migration whose window is nearest (before, during or after it).
  const nearest = (t: number) => {
    let best = 0;
    let bestD = Infinity;
    s.windows.forEach((w, i) => {
      const d = t < w.start ? w.start - t : t > w.end ? t - w.end : 0;
      if (d < bestD) (best = i), (bestD = d);
    });
    return best;
  };
  // Kept: what falls in a migration's measured span (beforeMs before it to afterMs after it);
  // the rest ran while the guests booted or another case migrated.
  const inSpan = (t: number, m: number) => t >= s.windows[m]!.start - o.beforeMs && t <= s.windows[m]!.end + o.afterMs;
  const requests: Request[] = [];
  for (const [id, t] of sent) {
    const m = nearest(t);
    const r = got.get(id);
    if (inSpan(t, m)) requests.push({ case: s.name, migration: m, t: t - s.windows[m]!.start, latencyMs: r === undefined ? null : r - t });
  }
  const replies: Reply[] = [];
  for (const t of got.values()) {
    const m = nearest(t);
    if (inSpan(t, m)) replies.push({ case: s.name, migration: m, t: t - s.windows[m]!.start });
  }
  return { requests, replies };
}

export async function runRequestLatency(o: LatencyOptions): Promise<{ requests: Request[]; replies: Reply[]; migrations: Migration[]; rounds: RicRound[] }> {
  ensureGuestBuilt();
  const sides: Side[] = [];
  try {
    // The guests boot side by side (the slow part under TCG); the migrations take turns.
    const started = await Promise.allSettled(o.cases.map((c) => setUp(c, o)));
    for (const p of started) if (p.status === 'fulfilled') sides.push(p.value);
    const bad = started.find((p) => p.status === 'rejected') as PromiseRejectedResult | undefined;
    if (bad) throw bad.reason;
    const migrations: Migration[] = [];
    for (let i = 0; i < o.runs; i++) {
      const order = i % 2 === 0 ? sides : [...sides].reverse();
      for (const s of order) migrations.push(await migrateOnce(s, o));
    }
    for (const s of sides) {
      s.client.kill('SIGTERM');
      await new Promise((r) => (s.client.exitCode !== null ? r(null) : s.client.once('exit', r)));
    }
    const parsed = sides.map((s) => parseClient(s, o));
    return { requests: parsed.flatMap((p) => p.requests), replies: parsed.flatMap((p) => p.replies), migrations, rounds: sides.flatMap((s) => s.rounds) };
  } finally {
    for (const s of sides) {
      s.client.kill('SIGKILL');
      await s.c.teardown();
    }
  }
}
