// `npm run bench:durability`: what each --durability policy costs, side by side in one run.
// Three stores, each a redis-server this benchmark starts on loopback (src/store/redis-server.ts)
// and stops at the end, set up as `migsafe run` sets up its store (settleDurability):
//   none         migsafe's own server as it starts (appendfsync everysec), commits not waited on
//   fsync        migsafe's own server switched to appendfsync always (what `auto` does)
//   replicas:1   a primary with one replica (REPLICAOF over 127.0.0.1), WAIT 1 after each commit
// Each repetition runs one full checkpoint round per policy (bench/pipeline.ts: real guest pages
// from ../shared/corpus, detect → encode → compress → commit), round-robin with the order
// rotated every repetition so that machine noise hits the policies alike. Reported per policy:
// the commit step (frames written, commit script, durability wait; median and p95) and the
// round's pages/s (median), both as ratios against `none`.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { Redis } from 'ioredis';
import { CheckpointStore } from '../src/store/checkpoint-store.js';
import { describeDurability, settleDurability, type Durability, type DurabilityChoice } from '../src/store/durability.js';
import { parseCodec } from '../src/store/frame.js';
import { connectRedis, startRedisServer, type RedisServerHandle } from '../src/store/redis-server.js';
import { waitFor } from '../src/util/wait.js';
import { buildImage, checkpointRound, resetStore, roundScratch, type Image } from './pipeline.js';
import { median, percentile } from './stats.js';

export const POLICIES = ['none', 'fsync', 'replicas:1'] as const;
export type Policy = (typeof POLICIES)[number];

/** How long a commit waits for its replica here: long, so that a slow round is measured, not refused. */
const REPLICA_TIMEOUT_MS = 10_000;

export interface DurabilityBenchOptions {
  /** Measured rounds per policy (after one warm-up round each). */
  reps: number;
  /** Size of the RAM image; every other page of it is dirty. */
  ramMiB: number;
  codec: string;
  /** Where the servers keep their append-only files (the fsyncs land on its filesystem). */
  dir: string;
  progress?: (line: string) => void;
}

export const USAGE =
  'usage: npm run bench:durability -- [--reps N] [--ram-mib M] [--codec C] [--dir DIR] [--json]\n' +
  '  --reps N      measured rounds per policy, interleaved round-robin (default 12)\n' +
  '  --ram-mib M   RAM image size; every other page is a dirty corpus page (default 256)\n' +
  '  --codec C     page compression, as `migsafe run --codec` (default zstd:1)\n' +
  "  --dir DIR     where the servers' append-only files go (default the system temp dir)\n" +
  '  --json        one JSON object on stdout instead of the table\n';

function positiveInt(flag: string, v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${flag} ${v}: give a whole number of at least 1`);
  return n;
}

/** The command line of the benchmark; a bad flag is an Error naming it and the fix. */
export function parseDurabilityArgs(argv: string[]): DurabilityBenchOptions & { json: boolean; help: boolean } {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        reps: { type: 'string', default: '12' },
        'ram-mib': { type: 'string', default: '256' },
        codec: { type: 'string', default: 'zstd:1' },
        dir: { type: 'string', default: tmpdir() },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    throw new Error(`${(e as Error).message}\n${USAGE}`);
  }
  parseCodec(values.codec);
  return {
    reps: positiveInt('reps', values.reps),
    ramMiB: positiveInt('ram-mib', values['ram-mib']),
    codec: values.codec,
    dir: values.dir,
    json: values.json,
    help: values.help,
  };
}

interface Target {
  policy: Policy;
  durability: Durability;
  redis: Redis;
  store: CheckpointStore;
  /** The replica's client (replicas:1), to check that it holds every committed version. */
  replica?: Redis;
  /** The server's appendfsync once set up, as it reports it. */
  appendfsync: string;
}

async function appendfsync(redis: Redis): Promise<string> {
  return ((await redis.call('CONFIG', 'GET', 'appendfsync')) as string[])[1] ?? '?';
}

async function server(dir: string, name: string): Promise<RedisServerHandle> {
  return startRedisServer({ dir: join(dir, name), port: 0 });
}

/** Starts the servers of `policy` and settles the policy on them as `migsafe run` does. */
async function setUp(policy: Policy, dir: string, img: Image, servers: RedisServerHandle[]): Promise<Target> {
  const primary = await server(dir, policy.replace(':', '-'));
  servers.push(primary);
  const redis = connectRedis(primary.url);
  let replica: Redis | undefined;
  const choice: DurabilityChoice =
    policy === 'replicas:1' ? { kind: 'replicas', replicas: 1, timeoutMs: REPLICA_TIMEOUT_MS } : { kind: policy };
  if (policy === 'replicas:1') {
    const r = await server(dir, 'replica');
    servers.push(r);
    replica = connectRedis(r.url);
    await replica.call('REPLICAOF', '127.0.0.1', primary.url.split(':').pop()!);
    await waitFor('the replica to sync with its primary', 30_000, async () =>
      /master_link_status:up/.test(await replica!.info('replication')) ? true : undefined,
    );
  }
  // own = true: these are migsafe's own servers, which it may switch to appendfsync always.
  const durability = await settleDurability(redis, choice, true, primary.url);
  if (durability.kind !== choice.kind) throw new Error(`${policy}: settled as ${describeDurability(durability)}`);
  const store = new CheckpointStore(redis, 'bench-durability');
  store.setDurability(durability);
  await resetStore(store, img);
  return { policy, durability, redis, store, replica, appendfsync: await appendfsync(redis) };
}

export interface PolicyResult {
  policy: Policy;
  /** As the log of `migsafe run` states it. */
  durability: string;
  appendfsync: string;
  rounds: number;
  pages: number;
  bytesStored: number;
  commitMs: number[];
  pagesPerSec: number[];
  commitMsMedian: number;
  commitMsP95: number;
  pagesPerSecMedian: number;
  /** Median commit ÷ that of none; median pages/s ÷ that of none. */
  commitRatio: number;
  pagesPerSecRatio: number;
  /** replicas:1: measured rounds whose version the replica held right after the commit returned. */
  replicaHeld?: number;
}

export interface DurabilityBenchResult {
  reps: number;
  ramMiB: number;
  codec: string;
  dirtyPages: number;
  corpus: string[];
  dir: string;
  filesystem: string;
  cpus: number;
  loadavg: { before: number[]; after: number[] };
  order: string;
  policies: PolicyResult[];
}

function filesystem(dir: string): string {
  try {
    const out = execFileSync('df', ['-T', dir], { encoding: 'utf8' }).trim().split('\n').pop()!.split(/\s+/);
    return `${out[1]} (${out[0]})`;
  } catch {
    return 'unknown';
  }
}

/** Runs the benchmark: servers started, rounds interleaved, servers stopped whatever happens. */
export async function runDurabilityBench(o: DurabilityBenchOptions): Promise<DurabilityBenchResult> {
  const say = o.progress ?? (() => {});
  const before = loadavg();
  const img = buildImage((o.ramMiB * 1024 * 1024) / 4096);
  const scratch = roundScratch(img);
  const dir = mkdtempSync(join(o.dir, 'migsafe-bench-durability-'));
  const servers: RedisServerHandle[] = [];
  const targets: Target[] = [];
  try {
    for (const p of POLICIES) {
      say(`starting the store for ${p}`);
      targets.push(await setUp(p, dir, img, servers));
    }
    const samples = new Map<Policy, { commitMs: number[]; pagesPerSec: number[]; pages: number; bytes: number; held: number }>(
      POLICIES.map((p) => [p, { commitMs: [], pagesPerSec: [], pages: 0, bytes: 0, held: 0 }]),
    );
    // Repetition 0 is the warm-up (first allocations, first AOF growth), not counted.
    for (let rep = 0; rep <= o.reps; rep++) {
      const order = targets.map((_, i) => targets[(i + rep) % targets.length]!);
      say(rep === 0 ? 'warm-up round per policy' : `repetition ${rep}/${o.reps}: ${order.map((t) => t.policy).join(', ')}`);
      for (const t of order) {
        const round = await checkpointRound(t.store, img, o.codec, scratch);
        if (rep > 0) {
          const s = samples.get(t.policy)!;
          s.commitMs.push(round.phaseMs[3]);
          s.pagesPerSec.push((round.pages / round.totalMs) * 1000);
          s.pages = round.pages;
          s.bytes = round.meta.bytesStored;
          if (t.replica && (await new CheckpointStore(t.replica, t.store.vmId).committed()).includes(round.meta.version)) s.held++;
        }
        await resetStore(t.store, img);
        // The next round's WAIT then covers its own writes only, not this reset.
        if (t.replica) await t.redis.call('WAIT', '1', String(REPLICA_TIMEOUT_MS));
      }
    }
    const base = samples.get('none')!;
    const baseCommit = median(base.commitMs);
    const basePps = median(base.pagesPerSec);
    const policies = targets.map((t): PolicyResult => {
      const s = samples.get(t.policy)!;
      return {
        policy: t.policy,
        durability: describeDurability(t.durability),
        appendfsync: t.appendfsync,
        rounds: s.commitMs.length,
        pages: s.pages,
        bytesStored: s.bytes,
        commitMs: s.commitMs,
        pagesPerSec: s.pagesPerSec,
        commitMsMedian: median(s.commitMs),
        commitMsP95: percentile(s.commitMs, 0.95),
        pagesPerSecMedian: median(s.pagesPerSec),
        commitRatio: median(s.commitMs) / baseCommit,
        pagesPerSecRatio: median(s.pagesPerSec) / basePps,
        ...(t.replica ? { replicaHeld: s.held } : {}),
      };
    });
    return {
      reps: o.reps,
      ramMiB: o.ramMiB,
      codec: o.codec,
      dirtyPages: img.dirty,
      corpus: img.files,
      dir: o.dir,
      filesystem: filesystem(o.dir),
      cpus: cpus().length,
      loadavg: { before, after: loadavg() },
      order: 'round-robin, rotated by one policy each repetition, after one warm-up round each',
      policies,
    };
  } finally {
    for (const t of targets) {
      t.redis.disconnect();
      t.replica?.disconnect();
    }
    for (const s of servers.reverse()) await s.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** "fsync commit ×1.09, pages/s ×0.96; replicas:1 commit ×2.01, pages/s ×0.67" */
export function ratioLine(r: DurabilityBenchResult): string {
  return r.policies
    .filter((p) => p.policy !== 'none')
    .map((p) => `${p.policy} commit ×${p.commitRatio.toFixed(2)}, pages/s ×${p.pagesPerSecRatio.toFixed(2)}`)
    .join('; ');
}

export function formatTable(r: DurabilityBenchResult): string {
  const load = (xs: number[]) => xs.map((x) => x.toFixed(2)).join(' ');
  const lines = [
    `Durability policies: ${r.reps} rounds each, ${r.order}; ${r.dirtyPages} real dirty pages in ${r.ramMiB} MiB ` +
      `(${r.corpus.join(', ')}), codec ${r.codec}; append-only files on ${r.filesystem}; ${r.cpus} CPUs, ` +
      `load average ${load(r.loadavg.before)} before, ${load(r.loadavg.after)} after`,
    'policy      appendfsync  commit median ms  commit p95 ms  pages/s median  commit ×none  pages/s ×none',
    ...r.policies.map(
      (p) =>
        `${p.policy.padEnd(11)} ${p.appendfsync.padEnd(11)} ${p.commitMsMedian.toFixed(1).padStart(17)} ${p.commitMsP95.toFixed(1).padStart(14)} ` +
        `${p.pagesPerSecMedian.toFixed(0).padStart(15)} ${p.commitRatio.toFixed(2).padStart(13)} ${p.pagesPerSecRatio.toFixed(2).padStart(14)}`,
    ),
    'commit = frames written + commit script + the policy\'s wait (WAIT 1 for replicas:1); pages/s = a whole round (detect → commit)',
    ...r.policies
      .filter((p) => p.replicaHeld !== undefined)
      .map((p) => `${p.policy}: the replica acknowledged every commit and held ${p.replicaHeld}/${p.rounds} versions right after it returned`),
    ratioLine(r),
  ];
  return lines.join('\n') + '\n';
}
