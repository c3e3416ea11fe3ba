// `npm run bench:migration`: live migration with and without FIC/RIC, side by side in one run.
// Two clusters of three hosts (network namespaces) run the same guest and workload at the same
// time; one has checkpointing off (`migsafe agent --no-checkpoint`), the other FIC/RIC with
// output commit on. Their migrations alternate (never two at once), ping-pong between the
// two hosts: pre-copy, then post-copy, N times each. Reported: total migration time and
// downtime (QEMU's own), with/without ratio; RIC's pause per round and replication time; the
// final FIC checkpoint's pause. Recovery times per failure scenario come from the fault matrix
// (npm run test:faults), whose table is printed here when it exists.
import { existsSync, openSync, readFileSync, readSync, closeSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ensureGuestBuilt, guestQemuArgs, parseConsoleLine, waitForConsole } from '../test/helpers/guest.js';
import { appendSerial, createCluster, PEER_PORT, type Cluster, type HostName } from '../test/helpers/hosts.js';
import { gateNetdev } from '../src/ha/gate.js';
import { waitFor } from '../src/util/wait.js';
import { patchedQemu } from '../test/helpers/patched-qemu.js';
import { median, note, percentile as pct } from './stats.js';

const N = Number(process.env.MIGSAFE_BENCH_RUNS ?? 3);
const BW = Number(process.env.MIGSAFE_BENCH_BANDWIDTH ?? 32); // MiB/s, both modes
const json = process.argv.includes('--json');
// MIGSAFE_BENCH_QEMU=patched: both sides on the patched QEMU (RIC then uses its dirty bitmap);
// a path: that binary; default: the system's qemu-system-x86_64.
const QEMU = process.env.MIGSAFE_BENCH_QEMU === 'patched' ? patchedQemu() : process.env.MIGSAFE_BENCH_QEMU || undefined;
// MIGSAFE_BENCH_MODES=postcopy (or precopy): only those modes.
const MODES = (process.env.MIGSAFE_BENCH_MODES ?? 'precopy,postcopy').split(',').filter((m): m is 'precopy' | 'postcopy' => m === 'precopy' || m === 'postcopy');
// MIGSAFE_BENCH_RIC_INTERVAL=MS: the checkpointing side's --ric-interval (default: the agent's).
const RIC_INTERVAL = process.env.MIGSAFE_BENCH_RIC_INTERVAL ? ['--ric-interval', process.env.MIGSAFE_BENCH_RIC_INTERVAL] : [];
// MIGSAFE_BENCH_WORKLOAD=qsort: the guest sorts (1 MiB of ints, unpaced) instead of wset, and
// the JSON carries its progress lines as the host saw them arrive (time, completed sorts) and
// each migration's start and end, for sorts per second over time (npm run eval's E3).
const WORKLOAD = process.env.MIGSAFE_BENCH_WORKLOAD === 'qsort' ? 'qsort' : 'wset';
const load = () => loadavg().map((x) => x.toFixed(2)).join(' ');

interface Side {
  name: 'without' | 'with';
  c: Cluster;
  owner: HostName;
  results: { mode: string; totalMs: number; downtimeMs: number; finalPauseMs?: number }[];
  /** The guest's progress lines as they arrived (host ms), and the migrations' windows. */
  series: { t: number; counter: number; cycles: number }[];
  windows: { mode: string; start: number; end: number }[];
  stopTail?: () => void;
  /** RIC rounds attributed to the migration after which they were first seen (versions are unique per VM). */
  ricSeen: Set<number>;
  ricRounds: (RoundLike & { migration: number; mode: string })[];
}

type RoundLike = { version: number; pauseMs: number; replicationMs: number; kind: string; pages?: number; bytesStored?: number; trigger?: string; dirtySource?: string };

/** RIC rounds on either host's status not seen before, tagged with this migration. */
function collectRic(s: Side, migration: number, mode: string): void {
  for (const h of ['src', 'dst'] as const) {
    for (const r of (s.c.status(h)?.vms.flatMap((v) => v.rounds) ?? []) as RoundLike[]) {
      if (r.kind !== 'ric' || s.ricSeen.has(r.version)) continue;
      s.ricSeen.add(r.version);
      s.ricRounds.push({ ...r, migration, mode });
    }
  }
}

/** Follows the serial log (both hosts' QEMUs append to it) and stamps each progress line. */
function tailSerial(path: string, into: Side['series']): () => void {
  let off = 0;
  let rest = '';
  const poll = () => {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch {
      return;
    }
    try {
      const buf = Buffer.alloc(1 << 16);
      for (;;) {
        const n = readSync(fd, buf, 0, buf.length, off);
        if (n <= 0) break;
        off += n;
        rest += buf.subarray(0, n).toString('utf8');
      }
    } finally {
      closeSync(fd);
    }
    const lines = rest.split('\n');
    rest = lines.pop()!;
    const t = Date.now();
    for (const l of lines) {
      const p = parseConsoleLine(l);
      if (p?.kind === 'progress') into.push({ t, counter: Number(p.fields.counter), cycles: Number(p.fields.cycles) });
    }
  };
  const h = setInterval(poll, 100);
  return () => clearInterval(h);
}

async function setUp(name: Side['name']): Promise<Side> {
  const c = await createCluster();
  const serial = join(c.dir, 'serial.log');
  const extra = name === 'without' ? ['--no-checkpoint'] : ['--interval', '1000', '--max-time', '200', '--fic-bandwidth', '8', ...RIC_INTERVAL];
  const argv = appendSerial(
    guestQemuArgs({
      qemu: QEMU,
      workload: WORKLOAD,
      workloadMiB: WORKLOAD === 'qsort' ? 1 : 16,
      rate: WORKLOAD === 'qsort' ? 0 : 1000,
      memMiB: 128,
      serialLog: serial,
      netdev: { netdev: gateNetdev(), ip: '192.168.77.2/24', gw: '192.168.77.1', peer: `${c.hosts.sto.ip}:${PEER_PORT}` },
    }),
  );
  c.startAgent('dst', extra);
  c.startAgent('src', [...extra, '--vm', 'b1', '--', ...argv]);
  const series: Side['series'] = [];
  const stopTail = WORKLOAD === 'qsort' ? tailSerial(serial, series) : undefined;
  await waitForConsole(serial, (p) => p.verifiedCount >= 2, 180_000);
  return { name, c, owner: 'src', results: [], series, windows: [], stopTail, ricSeen: new Set(), ricRounds: [] };
}

async function migrateOnce(s: Side, mode: 'precopy' | 'postcopy'): Promise<void> {
  const to: HostName = s.owner === 'src' ? 'dst' : 'src';
  if (s.name === 'with') {
    await waitFor('a committed checkpoint at the owner', 60_000, () => ((s.c.status(s.owner)?.vms[0]?.head ?? 0) > 0 ? true : undefined));
  }
  const start = Date.now();
  const r = await s.c.cli(s.owner, [
    'migrate', '--vm', 'b1', '--to', s.c.agents[to]!.addr, '--redis', s.c.redisUrl, '--mode', mode,
    '--bandwidth', String(BW), '--postcopy-bandwidth', String(BW),
  ]);
  const res = JSON.parse(r.stdout.trim().split('\n').pop() || '{}') as {
    status?: string;
    totalMs: number;
    qemuTotalMs: number;
    downtimeMs: number;
    finalFicPauseMs?: number;
  };
  if (res.status !== 'completed') throw new Error(`${s.name}: ${mode} migration did not complete: ${r.stderr.slice(-500)}`);
  // QEMU's total-time: from `migrate` to completion (the agents' set-up is not part of it).
  // (A query-migrate answered without numbers gives 0: that sample is left out.)
  s.windows.push({ mode, start, end: Date.now() });
  if (res.qemuTotalMs > 0) s.results.push({ mode, totalMs: res.qemuTotalMs, downtimeMs: res.downtimeMs, finalPauseMs: res.finalFicPauseMs });
  note(`  ${s.name.padEnd(7)} ${mode.padEnd(8)} ${s.owner}→${to}: total ${res.qemuTotalMs} ms (with set-up ${res.totalMs.toFixed(0)} ms), downtime ${res.downtimeMs} ms`);
  await waitFor(`${to} to own the VM`, 60_000, () => (s.c.status(to)?.vms[0]?.role === 'owner' ? true : undefined));
  s.owner = to;
  if (s.name === 'with') collectRic(s, s.windows.length - 1, mode);
  await sleep(2000);
}

async function main(): Promise<void> {
  ensureGuestBuilt();
  note(`bench:migration — ${N}× ${MODES.join(' and ')} per side, ${BW} MiB/s, guest 128 MiB, ${WORKLOAD === 'qsort' ? 'qsort 1 MiB' : 'wset 16 MiB @ 1000 writes/s'}, QEMU ${QEMU ?? 'qemu-system-x86_64'}`);
  const loadBefore = load();
  const sides: Side[] = [];
  try {
    sides.push(await setUp('without'));
    sides.push(await setUp('with'));
    for (let i = 0; i < N; i++) {
      for (const mode of MODES) {
        // Alternate which side goes first.
        const order = i % 2 === 0 ? sides : [...sides].reverse();
        for (const s of order) await migrateOnce(s, mode);
      }
    }
    const ric = (['src', 'dst'] as const)
      .flatMap((h) => sides[1]!.c.status(h)?.vms.flatMap((v) => v.rounds) ?? [])
      .filter((r) => r.kind === 'ric');
    const rows = MODES.map((mode) => {
      const w = sides[0]!.results.filter((r) => r.mode === mode);
      const f = sides[1]!.results.filter((r) => r.mode === mode);
      const tw = median(w.map((r) => r.totalMs));
      const tf = median(f.map((r) => r.totalMs));
      return {
        mode,
        totalWithoutMs: tw,
        totalWithMs: tf,
        totalRatio: tf / tw,
        downtimeWithoutMs: median(w.map((r) => r.downtimeMs)),
        downtimeWithMs: median(f.map((r) => r.downtimeMs)),
        finalFicPauseMs: median(f.map((r) => r.finalPauseMs ?? NaN)),
      };
    });
    const ricStats = {
      rounds: ric.length,
      dirtySources: [...new Set(ric.map((r) => (r as { dirtySource?: string }).dirtySource ?? '?'))],
      pauseMedianMs: median(ric.map((r) => r.pauseMs)),
      pauseP90Ms: pct(ric.map((r) => r.pauseMs), 0.9),
      replicationMedianMs: median(ric.map((r) => r.replicationMs)),
      replicationP90Ms: pct(ric.map((r) => r.replicationMs), 0.9),
    };
    const tablePath = process.env.MIGSAFE_FAULT_TABLE ?? '/tmp/migsafe-fault-table.md';
    const faults = existsSync(tablePath) ? readFileSync(tablePath, 'utf8') : null;
    if (json) {
      // samples: every migration of both sides; ricRounds: every RIC round of the side with
      // checkpointing (npm run eval draws spreads and cumulative downtimes from them).
      const samples = sides.flatMap((s) => s.results.map((r) => ({ side: s.name, ...r })));
      // Each RIC round with the migration (index into this side's migrations) it belongs to.
      const ricRounds = sides[1]!.ricRounds.map((x) => ({ migration: x.migration, mode: x.mode, version: x.version, pauseMs: x.pauseMs, replicationMs: x.replicationMs, pages: x.pages, bytesStored: x.bytesStored, trigger: x.trigger, dirtySource: x.dirtySource }));
      for (const s of sides) s.stopTail?.();
      const guest = WORKLOAD === 'qsort' ? sides.map((s) => ({ side: s.name, series: s.series, windows: s.windows })) : undefined;
      process.stdout.write(JSON.stringify({ runs: N, workload: WORKLOAD, guest, ricIntervalMs: RIC_INTERVAL[1] ? Number(RIC_INTERVAL[1]) : undefined, bandwidthMiBs: BW, qemu: QEMU ?? 'qemu-system-x86_64', load: { before: loadBefore, after: load() }, migration: rows, ric: ricStats, samples, ricRounds, faultTable: faults }) + '\n');
      return;
    }
    const out: string[] = [];
    out.push('', `migration (median of ${N}; same guest and workload, run side by side; ${BW} MiB/s; QEMU ${QEMU ?? 'qemu-system-x86_64'}; load average ${loadBefore} before, ${load()} after)`, '');
    out.push('| mode | total without | total with FIC/RIC | with/without | downtime without | downtime with | final FIC pause |');
    out.push('|---|---|---|---|---|---|---|');
    for (const r of rows) {
      out.push(
        `| ${r.mode} | ${r.totalWithoutMs.toFixed(0)} ms | ${r.totalWithMs.toFixed(0)} ms | ${((r.totalRatio - 1) * 100).toFixed(1)} % | ` +
          `${r.downtimeWithoutMs} ms | ${r.downtimeWithMs} ms | ${r.finalFicPauseMs.toFixed(0)} ms |`,
      );
    }
    out.push('', `RIC at the post-copy destination: ${ricStats.rounds} rounds (${ricStats.dirtySources.join(', ')} source); pause per round median ${ricStats.pauseMedianMs.toFixed(0)} ms ` +
      `(p90 ${ricStats.pauseP90Ms.toFixed(0)}), replication time median ${ricStats.replicationMedianMs.toFixed(0)} ms (p90 ${ricStats.replicationP90Ms.toFixed(0)})`);
    out.push('', faults ? `recovery per scenario (last npm run test:faults, ${tablePath}):\n\n${faults}` : `recovery per scenario: run \`npm run test:faults\` (its table lands in ${tablePath})`);
    process.stdout.write(out.join('\n') + '\n');
  } finally {
    for (const s of sides) {
      s.stopTail?.();
      await s.c.teardown();
    }
  }
}

await main();
