// `npm run bench:checkpoint`: the checkpoint pipeline, measured side by side in one run.
//  1. Pipeline: detect (SIMD compare of all RAM with the shadow) → encode → compress → Redis
//     commit, on real guest page pairs (../shared/corpus) placed in a RAM image; per codec:
//     dirty pages/s, bytes stored per dirty page, and the store's own limit — redis-benchmark's
//     pipelined SET throughput at the same value size, against the same server, in the same run.
//  2. A real guest (wset) under `migsafe run`: stage-2 pause per round, bytes per re-dirtied
//     page; then kill -9 and the recovery time of the 256 MiB guest.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CheckpointStore } from '../src/store/checkpoint-store.js';
import { connectRedis, startRedisServer } from '../src/store/redis-server.js';
import { buildImage, checkpointRound, resetStore, roundScratch, ROOT, type Image } from './pipeline.js';
import { median, note } from './stats.js';

const json = process.argv.includes('--json');
const skipGuest = process.argv.includes('--no-guest');
const skipPipeline = process.argv.includes('--guests-only');

interface PipelineResult {
  codec: string;
  dirtyPages: number;
  pagesPerSec: number;
  bytesPerPage: number;
  frameBytes: number;
  storedMBps: number;
  /** Bytes/s of the Redis phase alone (write + commit). */
  redisMBps: number;
  /** Median ms of: detect, encode, compress, Redis write + commit. */
  phaseMs: number[];
}

async function pipeline(url: string, codecSpec: string, img: Image, repeats: number) {
  const redis = connectRedis(url);
  const store = new CheckpointStore(redis, `bench-${codecSpec.replace(':', '-')}`);
  await resetStore(store, img);
  const scratch = roundScratch(img);
  const times: number[] = [];
  const phases: number[][] = [];
  let stored = 0;
  let frames = 0;
  let pages = 0;
  for (let r = 0; r < repeats; r++) {
    const round = await checkpointRound(store, img, codecSpec, scratch);
    times.push(round.totalMs);
    phases.push(round.phaseMs);
    pages = round.pages;
    stored = round.meta.bytesStored;
    frames = round.meta.chunks;
    await resetStore(store, img);
  }
  redis.disconnect();
  const sec = median(times) / 1000;
  return {
    codec: codecSpec,
    dirtyPages: pages,
    pagesPerSec: pages / sec,
    bytesPerPage: stored / pages,
    frameBytes: stored / frames,
    storedMBps: stored / sec / 1e6,
    redisMBps: stored / (median(phases.map((p) => p[3]!)) / 1000) / 1e6,
    phaseMs: [0, 1, 2, 3].map((i) => median(phases.map((p) => p[i]!))),
  } satisfies PipelineResult;
}

function redisBenchmark(sock: string, valueBytes: number, requests: number): number {
  const out = execFileSync(
    'redis-benchmark',
    // Large values need no deep pipeline to fill the link; small ones do.
    ['-s', sock, '-t', 'set', '-P', valueBytes > 1 << 20 ? '2' : '16', '-d', String(Math.max(1, Math.round(valueBytes))),
      '-n', String(requests), '-q', '--csv'],
    { encoding: 'utf8' },
  );
  // "SET","12345.67",...
  const m = /"SET","([\d.]+)"/.exec(out);
  if (!m) throw new Error(`cannot read redis-benchmark output: ${out}`);
  return Number(m[1]);
}

interface GuestSpec {
  label: string;
  qemu: string;
  dirtySource: 'scan' | 'bitmap';
  memMiB: number;
  mib: number;
  rate: number;
}

async function guestRun(url: string, g: GuestSpec) {
  const kernel = join(ROOT, 'test', 'guest', 'out', 'vmlinuz');
  const initrd = join(ROOT, 'test', 'guest', 'out', 'initrd.img');
  if (!existsSync(kernel)) throw new Error('the test guest is not built: run `bash test/guest/build.sh`');
  const work = mkdtempSync(join(tmpdir(), 'migsafe-bench-'));
  const run = mkdtempSync('/dev/shm/migsafe-bench-');
  const env = { ...process.env, MIGSAFE_STATE_DIR: work, MIGSAFE_RUN_DIR: run };
  const main = join(ROOT, 'dist', 'src', 'cli', 'main.js');
  const pidfile = join(work, 'qemu.pid');
  const qemu = [
    g.qemu, '-accel', 'tcg', '-machine', 'pc', '-nodefaults', '-m', `${g.memMiB}M`, '-display', 'none',
    '-serial', `file:${join(work, 'console')}`, '-no-reboot', '-kernel', kernel, '-initrd', initrd,
    '-append', `console=ttyS0 quiet panic=-1 migsafe.workload=wset migsafe.mib=${g.mib} migsafe.rate=${g.rate}`,
  ];
  const vm = `bench-${g.label}`;
  const args = ['run', '--vm', vm, '--redis', url, '--interval', '1000', '--dirty-source', g.dirtySource, '--pidfile', pidfile];
  const sidecar = spawn(process.execPath, [main, ...args, '--', ...qemu], {
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  sidecar.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise((r) => sidecar.once('exit', r));
  const ROUNDS = 15;
  const deadline = Date.now() + 240_000;
  while ((err.match(/committed:/g)?.length ?? 0) < ROUNDS) {
    if (Date.now() > deadline) throw new Error(`guest run did not reach ${ROUNDS} rounds:\n${err}`);
    await sleep(500);
  }
  const qemuPid = Number(readFileSync(pidfile, 'utf8'));
  process.kill(qemuPid, 'SIGKILL');
  await exited;
  const inspect = JSON.parse(execFileSync(process.execPath, [main, 'inspect', '--vm', vm, '--redis', url, '--json'], { env, encoding: 'utf8' })) as {
    versions: { version: number; pages: number; bytesStored: number; pauseMs: number; deviceStateBytes: number }[];
  };
  // Steady state: skip the first (full) versions while the guest boots and fills its region.
  const steady = inspect.versions.slice(5);
  const t0 = performance.now();
  const rec = execFileSync(process.execPath, [main, 'recover', '--vm', vm, '--redis', url, '--detach'], { env, encoding: 'utf8' });
  const wallMs = performance.now() - t0;
  const info = JSON.parse(rec.trim().split('\n').pop()!) as { pid: number; recoveryMs: number; pagesApplied: number };
  try {
    process.kill(info.pid, 'SIGKILL');
  } catch {
    /* gone */
  }
  rmSync(work, { recursive: true, force: true });
  rmSync(run, { recursive: true, force: true });
  const pages = steady.reduce((a, v) => a + v.pages, 0);
  return {
    ...g,
    rounds: inspect.versions.length,
    pauseMsMedian: median(steady.map((v) => v.pauseMs)),
    pauseMsMax: Math.max(...steady.map((v) => v.pauseMs)),
    bytesPerDirtyPage: steady.reduce((a, v) => a + v.bytesStored, 0) / pages,
    dirtyPagesPerRound: pages / steady.length,
    deviceStateBytes: steady[0]?.deviceStateBytes ?? 0,
    recoveryMs: info.recoveryMs,
    recoveryWallMs: wallMs,
    pagesApplied: info.pagesApplied,
  };
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-bench-redis-'));
  const srv = await startRedisServer({ dir });
  try {
    note('building a 256 MiB image with the corpus pages spread over it');
    const img = buildImage(65536);
    const results: (PipelineResult & { redisBenchMBps: number; fraction: number })[] = [];
    for (const codec of skipPipeline ? [] : ['none', 'lz4', 'zstd:1', 'zstd:3', 'gzip:1']) {
      note(`pipeline with ${codec}`);
      const r = await pipeline(srv.url, codec, img, 5);
      const rps = redisBenchmark(srv.url, r.frameBytes, Math.max(40, Math.min(20000, Math.round(4e8 / r.frameBytes))));
      const rb = (rps * r.frameBytes) / 1e6;
      results.push({ ...r, redisBenchMBps: rb, fraction: r.redisMBps / rb });
    }
    const patched = join(process.env.MIGSAFE_QEMU_PREFIX ?? join(ROOT, '.cache', 'qemu'), 'bin', 'qemu-system-x86_64');
    const specs: GuestSpec[] = [
      { label: 'wset-256M', qemu: 'qemu-system-x86_64', dirtySource: 'scan', memMiB: 256, mib: 64, rate: 20000 },
      // The bitmap's case: a large guest with a small working set, scan and bitmap side by side.
      { label: '1G-scan', qemu: existsSync(patched) ? patched : 'qemu-system-x86_64', dirtySource: 'scan', memMiB: 1024, mib: 8, rate: 5000 },
      ...(existsSync(patched)
        ? [{ label: '1G-bitmap', qemu: patched, dirtySource: 'bitmap' as const, memMiB: 1024, mib: 8, rate: 5000 }]
        : []),
    ];
    const guests = [];
    for (const g of skipGuest ? [] : specs) {
      note(`real guest ${g.label}: wset under migsafe run (${g.dirtySource}), then kill -9 and recover`);
      guests.push(await guestRun(srv.url, g));
    }
    if (json) {
      process.stdout.write(JSON.stringify({ corpus: img.files, dirtyPages: img.dirty, pipeline: results, guests }, null, 2) + '\n');
      return;
    }
    process.stdout.write(`\nPipeline: detect → encode → compress → Redis commit, ${img.dirty} real dirty pages in 256 MiB (${img.files.join(', ')})\n`);
    process.stdout.write('codec    pages/s  B/page  frame KiB  detect/encode/compress/redis ms  redis MB/s  redis-benchmark MB/s  fraction\n');
    for (const r of results) {
      process.stdout.write(
        `${r.codec.padEnd(7)} ${r.pagesPerSec.toFixed(0).padStart(8)} ${r.bytesPerPage.toFixed(1).padStart(7)} ${(r.frameBytes / 1024).toFixed(0).padStart(10)}  ` +
          `${r.phaseMs.map((x) => x.toFixed(0)).join(' / ').padStart(31)} ${r.redisMBps.toFixed(1).padStart(11)} ${r.redisBenchMBps.toFixed(1).padStart(21)} ${r.fraction.toFixed(2).padStart(9)}\n`,
      );
    }
    process.stdout.write('fraction = Redis phase MB/s ÷ redis-benchmark pipelined SET MB/s at the same value size, same server, same run\n');
    if (guests.length) {
      process.stdout.write('\nReal guests under migsafe run (wset workload, TCG), steady rounds (versions 6 on):\n');
      process.stdout.write('guest       source  RAM MiB  region MiB  pages/round  B/page  pause median ms  pause max ms  recovery ms\n');
      for (const g of guests) {
        process.stdout.write(
          `${g.label.padEnd(11)} ${g.dirtySource.padEnd(7)} ${String(g.memMiB).padStart(7)} ${String(g.mib).padStart(11)} ` +
            `${g.dirtyPagesPerRound.toFixed(0).padStart(12)} ${g.bytesPerDirtyPage.toFixed(1).padStart(7)} ${g.pauseMsMedian.toFixed(1).padStart(16)} ` +
            `${g.pauseMsMax.toFixed(1).padStart(13)} ${String(g.recoveryMs).padStart(12)}\n`,
        );
      }
      const scan = guests.find((g) => g.label === '1G-scan');
      const bm = guests.find((g) => g.label === '1G-bitmap');
      if (scan && bm) process.stdout.write(`stage-2 pause, 1 GiB guest: scan ÷ bitmap = ${(scan.pauseMsMedian / bm.pauseMsMedian).toFixed(1)}× (median)\n`);
      process.stdout.write('B/page: bytes stored per re-dirtied page (thesis: 54.47 B for its working-set workload)\n');
    }
  } finally {
    await srv.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
