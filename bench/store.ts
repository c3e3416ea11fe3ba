// `npm run bench:store`: one Redis against a 3-primary Redis Cluster, side by side in one run.
// Both stores are started here on loopback (append-only files, appendfsync always on every
// node: what migsafe commits under) and stopped at the end.
//   commit   N VMs (1, 4, 16) each commit one full version at once: real guest pages
//            (../shared/corpus), encoded and compressed before the clock starts, so the store is
//            what is timed — frames written, every stripe counted, the commit script.
//   recover  the same N versions read back at once, every frame checked and applied
//            (src/store/reader.ts), each image compared with the one written.
//   redis-benchmark  LPUSH of the same frame size against the same servers (--cluster on the
//            cluster), the ceiling a store client could reach.
//   large    one VM of --large-mib: its full version on the cluster, bytes per primary, read back.
// Repetitions alternate the two stores (order swapped every repetition) after a warm-up.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { native } from '../src/kernel/native.js';
import { summarizeBatch } from '../src/kernel/page-delta.js';
import { CheckpointStore } from '../src/store/checkpoint-store.js';
import { encodeFrame, parseCodec, type CodecChoice } from '../src/store/frame.js';
import { startLocalCluster, type LocalCluster } from '../src/store/local-cluster.js';
import { loadImage, planRestore } from '../src/store/reader.js';
import { primaries } from '../src/store/redis-cluster.js';
import { connectRedis, startRedisServer, type RedisServerHandle } from '../src/store/redis-server.js';
import { CORPUS, PAGE } from './pipeline.js';
import { median } from './stats.js';

export interface StoreBenchOptions {
  vms: number[];
  ramMiB: number;
  reps: number;
  largeMiB: number;
  codec: string;
  dir: string;
  progress?: (line: string) => void;
}

export const USAGE =
  'usage: npm run bench:store -- [--vms 1,4,16] [--ram-mib M] [--reps N] [--large-mib L] [--codec C] [--dir DIR] [--json]\n' +
  '  --vms LIST     how many VMs commit (and recover) at once, one measurement each (default 1,4,16)\n' +
  '  --ram-mib M    RAM of each of those VMs; every other page is a corpus page (default 32)\n' +
  '  --reps N       measured repetitions per store and VM count, alternating the stores (default 3)\n' +
  '  --large-mib L  one VM of L MiB written to the cluster whole: bytes per primary (default 4096; 0: skip)\n' +
  '  --codec C      page compression, as `migsafe run --codec` (default lz4)\n' +
  "  --dir DIR      where the servers' append-only files go (default the system temp dir)\n" +
  '  --json         one JSON object on stdout instead of the table\n';

export type Topology = 'single' | 'cluster';

export interface Measure {
  topology: Topology;
  vms: number;
  pages: number;
  frameBytes: number;
  commitPagesPerSec: number[];
  commitMBps: number[];
  recoverMBps: number[];
  commitMBpsMedian: number;
  recoverMBpsMedian: number;
  commitPagesPerSecMedian: number;
}

export interface StoreBenchResult {
  options: Omit<StoreBenchOptions, 'progress'>;
  cpus: number;
  loadavg: { before: number[]; after: number[] };
  dirtyPagesPerVm: number;
  frameBytes: number;
  primaries: number;
  measures: Measure[];
  redisBenchmark: { topology: Topology; dataBytes: number; requestsPerSec: number; MBps: number }[];
  large?: { mib: number; pages: number; bytesStored: number; commitMs: number; recoverMs: number; perPrimary: { node: string; keys: number; bytes: number }[]; verified: boolean };
}

function list(flag: string, v: string): number[] {
  const xs = v.split(',').map(Number);
  if (!xs.length || xs.some((x) => !Number.isInteger(x) || x < 1 || x > 256)) throw new Error(`--${flag} ${v}: give whole numbers from 1 to 256, separated by commas`);
  return xs;
}

function whole(flag: string, v: string, min: number): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${flag} ${v}: give a whole number of at least ${min}`);
  return n;
}

export function parseStoreArgs(argv: string[]): StoreBenchOptions & { json: boolean; help: boolean } {
  const v: Record<string, string> = { vms: '1,4,16', 'ram-mib': '32', reps: '3', 'large-mib': '4096', codec: 'lz4', dir: tmpdir() };
  let json = false;
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--json') json = true;
    else if (a === '--help' || a === '-h') help = true;
    else if (a.startsWith('--') && a.slice(2) in v) {
      const val = argv[++i];
      if (val === undefined) throw new Error(`${a} needs a value\n${USAGE}`);
      v[a.slice(2)] = val;
    } else throw new Error(`unknown argument ${a}\n${USAGE}`);
  }
  parseCodec(v.codec!);
  return {
    vms: list('vms', v.vms!),
    ramMiB: whole('ram-mib', v['ram-mib']!, 1),
    reps: whole('reps', v.reps!, 1),
    largeMiB: whole('large-mib', v['large-mib']!, 0),
    codec: v.codec!,
    dir: v.dir!,
    json,
    help,
  };
}

/** RAM of `pages` pages, every other one a corpus page (the rest zero), as a busy guest's. */
export function corpusImage(pages: number): Buffer {
  const files = readdirSync(CORPUS).filter((f) => f.endsWith('.pairs')).sort();
  if (!files.length) throw new Error(`no .pairs files in ${CORPUS} (set MIGSAFE_CORPUS)`);
  const src = Buffer.concat(files.map((f) => readFileSync(join(CORPUS, f))));
  const ram = Buffer.alloc(pages * PAGE);
  const pairs = src.length / (2 * PAGE);
  for (let p = 0, k = 0; p < pages; p += 2, k++) {
    src.copy(ram, p * PAGE, ((k % pairs) * 2 + 1) * PAGE, ((k % pairs) * 2 + 2) * PAGE);
    ram.writeUInt32LE(p + 1, p * PAGE); // no two pages alike
  }
  return ram;
}

/** A full version of `ram` (against zeros) in encoded records of 4096 pages each: encoded once, framed per version. */
async function records(ram: Buffer): Promise<{ raw: Buffer; records: number }[]> {
  const n = native();
  const zero = Buffer.alloc(ram.length);
  const dirty = n.scanDirty(ram, zero);
  const out: { raw: Buffer; records: number }[] = [];
  for (let at = 0; at < dirty.length; at += 4096) {
    const raw = await n.encodeBatchAsync(ram, zero, dirty.subarray(at, at + 4096), { updateShadow: false, dense: true });
    out.push({ raw, records: summarizeBatch(raw).records });
  }
  return out;
}

const DEVICE = Buffer.alloc(200 * 1024, 7);

/** Writes the prepared frames of every store at once and commits; ms. */
async function commitAll(jobs: { pending: Awaited<ReturnType<CheckpointStore['begin']>>; frames: Buffer[]; dev: Buffer; pages: number }[]): Promise<number> {
  const t0 = performance.now();
  await Promise.all(
    jobs.map(async (j) => {
      for (const f of j.frames) j.pending.addChunk(f);
      j.pending.setDeviceState(j.dev);
      await j.pending.commit({
        pages: j.pages, bytesRaw: j.pages * PAGE, pauseMs: 0, deviceStateBytes: DEVICE.length, dirtySource: 'scan',
        codec: 'bench', stage1Pages: j.pages, stage2Pages: 0,
      });
    }),
  );
  return performance.now() - t0;
}

/** Begins a version in each store and frames the records for it (untimed: the frames are bound to it). */
async function frameJobs(stores: CheckpointStore[], ramBytes: number, recs: { raw: Buffer; records: number }[], codec: CodecChoice) {
  return Promise.all(
    stores.map(async (store) => {
      await store.deleteAll();
      await store.init(['bench'], ramBytes);
      const pending = await store.begin(0);
      const frames: Buffer[] = [];
      for (const [i, r] of recs.entries()) frames.push(await encodeFrame('pages', r.raw, r.records, codec, pending.chunkBinding(i)));
      const dev = await encodeFrame('device', DEVICE, 0, codec, pending.deviceBinding());
      return { pending, frames, dev, pages: recs.reduce((a, r) => a + r.records, 0) };
    }),
  );
}

/** Reads every store's newest version back at once, checks it is `ram`; ms. */
async function recoverAll(stores: CheckpointStore[], ram: Buffer): Promise<number> {
  const t0 = performance.now();
  const images = await Promise.all(stores.map(async (s) => (await loadImage(s, await planRestore(s))).image));
  const ms = performance.now() - t0;
  images.forEach((img, i) => {
    if (!img.equals(ram)) throw new Error(`${stores[i]!.vmId}: the image read back differs from the one written`);
  });
  return ms;
}

function redisBenchmark(target: Topology, port: number, dataBytes: number): { requestsPerSec: number } {
  const out = execFileSync(
    'redis-benchmark',
    ['-h', '127.0.0.1', '-p', String(port), ...(target === 'cluster' ? ['--cluster'] : []), '-t', 'lpush', '-n', '64', '-c', '4', '-d', String(dataBytes), '--csv'],
    { encoding: 'utf8', timeout: 300_000 },
  );
  // "test","rps",...: the line of LPUSH.
  const line = out.split('\n').find((l) => /^"LPUSH/.test(l));
  const rps = line ? Number(line.split(',')[1]!.replace(/"/g, '')) : NaN;
  if (!Number.isFinite(rps) || rps <= 0) throw new Error(`redis-benchmark gave no LPUSH rate:\n${out}`);
  return { requestsPerSec: rps };
}

async function flushAll(redis: Redis): Promise<void> {
  await Promise.all(primaries(redis).map((n) => n.flushall()));
}

/** Per primary of the cluster: the VM's stripe keys there and their bytes (MEMORY USAGE). */
async function bytesPerPrimary(redis: Redis, vm: string): Promise<{ node: string; keys: number; bytes: number }[]> {
  return Promise.all(
    primaries(redis).map(async (node) => {
      let cursor = '0';
      let keys = 0;
      let bytes = 0;
      do {
        const [next, found] = await node.scan(cursor, 'MATCH', `migsafe:{${vm}*`, 'COUNT', 1000);
        cursor = next;
        for (const k of found) {
          keys++;
          bytes += Number(await node.call('MEMORY', 'USAGE', k, 'SAMPLES', '0'));
        }
      } while (cursor !== '0');
      return { node: `${node.options.host}:${node.options.port}`, keys, bytes };
    }),
  );
}

export async function runStoreBench(o: StoreBenchOptions): Promise<StoreBenchResult> {
  const say = o.progress ?? (() => {});
  const before = loadavg();
  const codec = parseCodec(o.codec);
  const dir = mkdtempSync(join(o.dir, 'migsafe-bench-store-'));
  let single: RedisServerHandle | undefined;
  let cluster: LocalCluster | undefined;
  const clients: Redis[] = [];
  try {
    say('starting one redis-server and a 3-primary cluster (appendfsync always)');
    single = await startRedisServer({ dir: join(dir, 'single'), port: 0, appendfsync: 'always' });
    // Redis's default node timeout: a node busy writing a large VM's frames must not be voted down (no replicas here).
    cluster = await startLocalCluster({ dir: join(dir, 'cluster'), primaries: 3, appendfsync: 'always', nodeTimeoutMs: 15_000 });
    const conn = { single: connectRedis(single.url), cluster: connectRedis(cluster.url) } as Record<Topology, Redis>;
    clients.push(conn.single, conn.cluster);
    const ram = corpusImage((o.ramMiB * 2 ** 20) / PAGE);
    const recs = await records(ram);
    const pages = recs.reduce((a, r) => a + r.records, 0);
    const maxVms = Math.max(...o.vms);
    const stores = { single: [] as CheckpointStore[], cluster: [] as CheckpointStore[] };
    for (const t of ['single', 'cluster'] as const) for (let i = 0; i < maxVms; i++) stores[t].push(new CheckpointStore(conn[t], `bench-store-${i}`));
    const measures: Measure[] = [];
    let frameBytes = 0;
    for (const n of o.vms) {
      const m = { single: { pps: [] as number[], w: [] as number[], r: [] as number[], bytes: 0 }, cluster: { pps: [] as number[], w: [] as number[], r: [] as number[], bytes: 0 } };
      for (let rep = 0; rep <= o.reps; rep++) {
        const order: Topology[] = rep % 2 ? ['cluster', 'single'] : ['single', 'cluster'];
        say(`${n} VM(s): ${rep ? `repetition ${rep}/${o.reps}` : 'warm-up'} (${order.join(', ')})`);
        for (const t of order) {
          const jobs = await frameJobs(stores[t].slice(0, n), ram.length, recs, codec);
          const bytes = jobs.reduce((a, j) => a + j.frames.reduce((b, f) => b + f.length, 0), 0);
          frameBytes = jobs[0]!.frames.reduce((b, f) => b + f.length, 0) / jobs[0]!.frames.length;
          const wMs = await commitAll(jobs);
          const rMs = await recoverAll(stores[t].slice(0, n), ram);
          if (rep === 0) continue;
          m[t].pps.push((n * pages) / (wMs / 1000));
          m[t].w.push(bytes / (1 << 20) / (wMs / 1000));
          m[t].r.push(bytes / (1 << 20) / (rMs / 1000));
          m[t].bytes = bytes;
        }
      }
      for (const t of ['single', 'cluster'] as const) {
        measures.push({
          topology: t, vms: n, pages: n * pages, frameBytes: m[t].bytes,
          commitPagesPerSec: m[t].pps, commitMBps: m[t].w, recoverMBps: m[t].r,
          commitMBpsMedian: median(m[t].w), recoverMBpsMedian: median(m[t].r), commitPagesPerSecMedian: median(m[t].pps),
        });
      }
      for (const t of ['single', 'cluster'] as const) for (const s of stores[t]) await s.deleteAll();
    }
    const dataBytes = Math.min(Math.round(frameBytes), 4 << 20);
    const redisBench: StoreBenchResult['redisBenchmark'] = [];
    for (const t of ['single', 'cluster'] as const) {
      say(`redis-benchmark LPUSH of ${dataBytes} B on the ${t} store`);
      const port = t === 'single' ? Number(single.url.split(':').pop()) : cluster.nodes[0]!.port;
      const { requestsPerSec } = redisBenchmark(t, port, dataBytes);
      redisBench.push({ topology: t, dataBytes, requestsPerSec, MBps: (requestsPerSec * dataBytes) / (1 << 20) });
      await flushAll(conn[t]);
    }
    let large: StoreBenchResult['large'];
    if (o.largeMiB > 0) {
      say(`one VM of ${o.largeMiB} MiB: a full version on the cluster`);
      const big = corpusImage((o.largeMiB * 2 ** 20) / PAGE);
      const bigRecs = await records(big);
      const store = new CheckpointStore(conn.cluster, 'bench-store-large');
      const jobs = await frameJobs([store], big.length, bigRecs, codec);
      const commitMs = await commitAll(jobs);
      const meta = (await store.meta(await store.head()))!;
      const perPrimary = await bytesPerPrimary(conn.cluster, 'bench-store-large');
      say('reading it back');
      const recoverMs = await recoverAll([store], big);
      large = { mib: o.largeMiB, pages: meta.pages, bytesStored: meta.bytesStored, commitMs, recoverMs, perPrimary, verified: true };
      await store.deleteAll();
    }
    return {
      options: { vms: o.vms, ramMiB: o.ramMiB, reps: o.reps, largeMiB: o.largeMiB, codec: o.codec, dir: o.dir },
      cpus: cpus().length,
      loadavg: { before, after: loadavg() },
      dirtyPagesPerVm: pages,
      frameBytes: Math.round(frameBytes),
      primaries: primaries(conn.cluster).length,
      measures,
      redisBenchmark: redisBench,
      ...(large ? { large } : {}),
    };
  } finally {
    for (const c of clients) c.disconnect();
    await cluster?.stop();
    await single?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

export function formatTable(r: StoreBenchResult): string {
  const f = (x: number, d = 0) => x.toFixed(d);
  const lines = [
    `Store throughput: one redis-server vs a ${r.primaries}-primary cluster, appendfsync always on every node, loopback; ` +
      `${r.dirtyPagesPerVm} dirty pages per VM (${r.options.ramMiB} MiB, corpus pages), codec ${r.options.codec}, frames of ~${f(r.frameBytes / 1024)} KiB; ` +
      `median of ${r.options.reps} repetitions, stores alternating; ${r.cpus} CPUs, load ${r.loadavg.before.map((x) => f(x, 2)).join(' ')} before, ${r.loadavg.after.map((x) => f(x, 2)).join(' ')} after`,
    '',
    '| VMs at once | store | commit pages/s | commit MB/s | recovery read MB/s | cluster ÷ single (commit / read) |',
    '|---|---|---|---|---|---|',
  ];
  for (const n of r.options.vms) {
    const s = r.measures.find((m) => m.vms === n && m.topology === 'single')!;
    const c = r.measures.find((m) => m.vms === n && m.topology === 'cluster')!;
    lines.push(`| ${n} | single | ${f(s.commitPagesPerSecMedian)} | ${f(s.commitMBpsMedian)} | ${f(s.recoverMBpsMedian)} | |`);
    lines.push(
      `| ${n} | cluster | ${f(c.commitPagesPerSecMedian)} | ${f(c.commitMBpsMedian)} | ${f(c.recoverMBpsMedian)} | ${f(c.commitMBpsMedian / s.commitMBpsMedian, 2)} / ${f(c.recoverMBpsMedian / s.recoverMBpsMedian, 2)} |`,
    );
  }
  lines.push('', '| redis-benchmark LPUSH (same servers, same run) | value size | requests/s | MB/s |', '|---|---|---|---|');
  for (const b of r.redisBenchmark) lines.push(`| ${b.topology} | ${f(b.dataBytes / 1024)} KiB | ${f(b.requestsPerSec)} | ${f(b.MBps)} |`);
  if (r.large) {
    const L = r.large;
    lines.push(
      '',
      `One VM of ${L.mib} MiB on the cluster: ${L.pages} pages, ${f(L.bytesStored / (1 << 20))} MiB of frames, committed in ${f(L.commitMs)} ms, ` +
        `read back and verified in ${f(L.recoverMs)} ms`,
      '',
      '| primary | keys of the VM | bytes (MEMORY USAGE) | share |',
      '|---|---|---|---|',
      ...L.perPrimary.map((p) => `| ${p.node} | ${p.keys} | ${p.bytes} | ${f((100 * p.bytes) / L.perPrimary.reduce((a, x) => a + x.bytes, 0), 1)} % |`),
    );
  }
  return lines.join('\n') + '\n';
}
