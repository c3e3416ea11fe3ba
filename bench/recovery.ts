// `npm run bench:recovery [-- --sizes 256,1024] [--runs N] [--json]`: how long a user waits for a
// VM to come back, side by side in one run, per guest size (MiB), with most of the guest's
// memory in use (the self-checking wset workload over 3/4 of RAM, at most RAM − 112 MiB):
//   * QEMU's own: stop, `migrate exec:cat > FILE` (save), then a new QEMU `-incoming defer` +
//     `migrate-incoming exec:cat FILE` + cont (restore, timed from spawning QEMU);
//   * migsafe eager: `migsafe attach` checkpoints the booted guest (its first, full, version timed
//     from its own log), QEMU is killed with SIGKILL, `migsafe recover --detach` rebuilds it (its recoveryMs:
//     read + verify, then QEMU start + device state).
//   * migsafe lazy: the same version again with `recover --lazy --detach` (runningMs, residentMs),
//     twice: with its page indexes, and with them taken out of the store (as an older migsafe
//     wrote it: whole lists read); the order alternates by run.
// Every restored guest must print a verified progress line with no error (its memory
// self-check) before a result counts. Issue 19's instance pool is not built yet: no column.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { QmpClient } from '../src/qemu/qmp.js';
import { vmKeys } from '../src/store/keys.js';
import { connectRedis, startRedisServer } from '../src/store/redis-server.js';
import { ensureGuestBuilt, startTestGuest, waitForConsole } from '../test/helpers/guest.js';
import { ROOT } from './pipeline.js';
import { median, note } from './stats.js';

export const USAGE = `npm run bench:recovery -- [--sizes MiB,MiB,...] [--region MiB] [--runs N] [--json]
  --sizes  guest RAM sizes in MiB (default 256,1024); the workload's region is 3/4 of each
           (at most RAM - 112 MiB)
  --region the workload's region in MiB instead (at most RAM - 112 MiB)
  --runs   repetitions per size and method (default 1); the table shows medians and ranges
`;

interface Options {
  sizes: number[];
  runs: number;
  json: boolean;
  help: boolean;
  /** Also `recover --lazy` (the bench's default; eval's E4 leaves it out). */
  lazy?: boolean;
  /** --region: the workload's MiB instead of 3/4 of RAM. */
  region?: number;
}

export function parseRecoveryArgs(argv: string[]): Options {
  const o: Options = { sizes: [256, 1024], runs: 1, json: false, help: false, lazy: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value\n${USAGE}`);
      return v;
    };
    if (a === '--json') o.json = true;
    else if (a === '--help' || a === '-h') o.help = true;
    else if (a === '--sizes') {
      o.sizes = value().split(',').map((s) => Number(s));
      if (o.sizes.some((s) => !Number.isInteger(s) || s < 64 || s % 2)) {
        throw new Error(`--sizes: give even whole MiB of at least 64, e.g. --sizes 256,1024`);
      }
    } else if (a === '--region') {
      o.region = Number(value());
      if (!Number.isInteger(o.region) || o.region < 8) throw new Error('--region: give whole MiB of at least 8');
    } else if (a === '--runs') {
      o.runs = Number(value());
      if (!Number.isInteger(o.runs) || o.runs < 1) throw new Error('--runs: give a whole number of at least 1');
    } else throw new Error(`unknown option ${a}\n${USAGE}`);
  }
  return o;
}

const RATE = 20000; // wset writes/s: a guest that keeps dirtying while being checkpointed
// 3/4 of RAM, but leave the guest's kernel and initramfs ~112 MiB (at 256 MiB, 3/4 gets the
// workload OOM-killed).
let regionOverride: number | undefined;
const regionMiB = (memMiB: number) => Math.min(regionOverride ?? Math.floor((memMiB * 3) / 4), memMiB - 112);
// Booting and verifying a large region under TCG takes a while; scale the waits with size.
const bootTimeout = (memMiB: number) => 120_000 + memMiB * 400;

/** The guest's memory self-check after a restore: a verified tick with no error. */
async function selfCheck(serial: string, memMiB: number, child?: ChildProcess): Promise<void> {
  const c = await waitForConsole(serial, (p) => p.errors.length > 0 || p.died || p.progress.some((l) => l.verified), bootTimeout(memMiB), { child, pollMs: 200 });
  if (c.errors.length || c.died) throw new Error(`restored guest failed its memory self-check: ${c.errors[0]?.raw ?? 'it died'}`);
}

/** The workload's region is written and verified once (fails fast when the workload died). */
async function booted(serial: string, memMiB: number, child: ChildProcess): Promise<void> {
  const c = await waitForConsole(serial, (p) => p.verifiedCount >= 1 || p.died || p.errors.length > 0, bootTimeout(memMiB), { child, pollMs: 200 });
  if (c.died || c.errors.length) throw new Error(`the guest's workload failed before any checkpoint: ${c.errors[0]?.raw ?? 'it exited (out of memory?)'}`);
}

async function waitMigration(qmp: QmpClient, what: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
    if (m.status === 'completed') return;
    if (m.status === 'failed' || m.status === 'cancelled') throw new Error(`${what}: ${m.status} ${m['error-desc'] ?? ''}`);
    if (Date.now() > deadline) throw new Error(`${what}: not done after ${timeoutMs} ms (${m.status})`);
    await sleep(10);
  }
}

export interface QemuResult { saveMs: number; restoreMs: number; fileBytes: number }

async function qemuOwn(memMiB: number, work: string): Promise<QemuResult> {
  const serial = join(work, 'qemu-own.serial');
  const g = startTestGuest({ workload: 'wset', memMiB, workloadMiB: regionMiB(memMiB), rate: RATE, serialLog: serial });
  const file = join(work, 'qemu-own.save');
  try {
    await booted(serial, memMiB, g.child);
    const qmp = await QmpClient.connect(g.qmpPath, 10_000);
    const t0 = performance.now();
    await qmp.execute('stop');
    await qmp.execute('migrate', { uri: `exec:cat > ${file}` });
    await waitMigration(qmp, 'QEMU save', 600_000);
    const saveMs = performance.now() - t0;
    qmp.close();
    await g.stop();
    const serial2 = join(work, 'qemu-own-restored.serial');
    const t1 = performance.now();
    const g2 = startTestGuest({ workload: 'wset', memMiB, workloadMiB: regionMiB(memMiB), rate: RATE, serialLog: serial2, incoming: 'defer' });
    try {
      const q2 = await QmpClient.connect(g2.qmpPath, 30_000);
      await q2.execute('migrate-incoming', { uri: `exec:cat ${file}` });
      await waitMigration(q2, 'QEMU restore', 600_000);
      const st = await q2.execute<{ running: boolean }>('query-status');
      if (!st.running) await q2.execute('cont');
      const restoreMs = performance.now() - t1;
      q2.close();
      await selfCheck(serial2, memMiB, g2.child);
      return { saveMs, restoreMs, fileBytes: statSync(file).size };
    } finally {
      await g2.stop();
    }
  } finally {
    await g.stop();
    rmSync(file, { force: true });
  }
}

export interface MigsafeResult {
  firstFullMs: number;
  recoveryMs: number;
  loadMs: number;
  writeMs: number;
  startMs: number;
  wallMs: number;
  versions: number;
  /** From `migsafe inspect --json` after the recovery: pages and stored bytes of each committed version. */
  versionPages?: { version: number; pages: number; bytesStored: number }[];
  /** The version the store's base image stands at (recovery reads it plus the versions after it), or null. */
  base?: number;
  /** `recover --lazy` of the same version from the same store, after the eager one: guest running, all memory in. */
  lazyRunningMs?: number;
  lazyResidentMs?: number;
  /** Frames fetched out of turn for faults, and frames read before the guest ran (of all). */
  lazyFaultFrames?: number;
  lazyFramesBeforeRunning?: number;
  lazyFrames?: number;
  /** The same, the page indexes taken out of the store first (as an older migsafe wrote it). */
  noIndexRunningMs?: number;
  noIndexResidentMs?: number;
  noIndexFramesBeforeRunning?: number;
}

interface LazyInfo {
  pid: number;
  runningMs: number;
  residentMs: number;
  index: string;
  faultFrames: number;
  framesBeforeRunning: number;
  frames: number;
}

/** Takes a VM's page indexes out of the store (index keys and their lengths in the metadata); returns what puts them back. */
async function stripIndexes(url: string, vm: string): Promise<() => Promise<void>> {
  const redis = connectRedis(url);
  const k = vmKeys(vm);
  const saved: { meta: string; field: string; bytes: string; key: string; value: Buffer }[] = [];
  const versions = (await redis.zrange(k.committed, 0, -1)).map(Number);
  for (const v of versions) {
    for (const [field, key] of [['indexBytes', k.index(v)], ['baseIndexBytes', k.baseIndex]] as const) {
      const bytes = await redis.hget(k.version(v), field);
      const value = await redis.getBuffer(key);
      if (bytes === null || value === null) continue;
      saved.push({ meta: k.version(v), field, bytes, key, value });
      await redis.multi().hdel(k.version(v), field).del(key).exec();
    }
  }
  if (saved.length === 0) throw new Error(`VM ${vm}: no page indexes in the store to take out`);
  return async () => {
    for (const x of saved) await redis.multi().hset(x.meta, x.field, x.bytes).set(x.key, x.value).exec();
    redis.disconnect();
  };
}

/** pino JSON lines of the sidecar: the time of the first line matching `re`. */
function logTime(log: string, re: RegExp): number | undefined {
  for (const line of log.split('\n')) {
    if (!re.test(line)) continue;
    try {
      const t = (JSON.parse(line) as { time: number | string }).time;
      return typeof t === 'number' ? t : Date.parse(t);
    } catch {
      /* not a JSON line */
    }
  }
  return undefined;
}

async function migsafeEager(memMiB: number, work: string, url: string, run: number, withLazy = false): Promise<MigsafeResult> {
  const main = join(ROOT, 'dist', 'src', 'cli', 'main.js');
  const state = mkdtempSync(join(work, 'state-'));
  const shm = mkdtempSync('/dev/shm/migsafe-bench-');
  const env = { ...process.env, MIGSAFE_STATE_DIR: state, MIGSAFE_RUN_DIR: shm };
  const serial = join(work, 'migsafe.serial');
  const vm = `bench-recovery-${memMiB}-${run}`;
  // The guest boots and fills its region first; then `attach` takes its first version, a full
  // one of memory in use — the case QEMU's own save is compared with.
  const g = startTestGuest({ workload: 'wset', memMiB, workloadMiB: regionMiB(memMiB), rate: RATE, serialLog: serial });
  let sidecar: ChildProcess | undefined;
  let recoveredPid: number | undefined;
  try {
    await booted(serial, memMiB, g.child);
    const qemuPid = Number(execFileSync('pgrep', ['-P', String(g.child.pid)], { encoding: 'utf8' }).trim().split('\n')[0]);
    sidecar = spawn(process.execPath, [main, 'attach', '--vm', vm, '--redis', url, '--interval', '2000', '--qmp', g.qmpPath, '--ram', g.ramPath, '--pid', String(qemuPid)], {
      env,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let log = '';
    sidecar.stderr!.setEncoding('utf8').on('data', (d: string) => (log += d));
    const exited = new Promise((r) => sidecar!.once('exit', r));
    const committed = () => log.match(/committed:/g)?.length ?? 0;
    const deadline = Date.now() + bootTimeout(memMiB);
    while (committed() < 3) {
      if (sidecar.exitCode !== null) throw new Error(`migsafe attach exited:\n${log.slice(-2000)}`);
      if (Date.now() > deadline) throw new Error(`migsafe attach: no 3 commits:\n${log.slice(-2000)}`);
      await sleep(200);
    }
    const start = logTime(log, /dirty pages from/);
    const first = logTime(log, /version 1 committed/);
    if (start === undefined || first === undefined) throw new Error(`cannot find the first round in the sidecar's log:\n${log.slice(0, 2000)}`);
    process.kill(qemuPid, 'SIGKILL');
    await exited;
    const versions = committed();
    const t0 = performance.now();
    const out = execFileSync(process.execPath, [main, 'recover', '--vm', vm, '--redis', url, '--detach'], { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const wallMs = performance.now() - t0;
    const info = JSON.parse(out.trim().split('\n').pop()!) as { pid: number; recoveryMs: number; loadMs: number; writeMs: number; startMs: number };
    recoveredPid = info.pid;
    await selfCheck(serial, memMiB);
    const ins = JSON.parse(execFileSync(process.execPath, [main, 'inspect', '--vm', vm, '--redis', url, '--json'], { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })) as {
      base: number;
      versions: { version: number; pages: number; bytesStored: number }[];
    };
    const versionPages = ins.versions.map((v) => ({ version: v.version, pages: v.pages, bytesStored: v.bytesStored }));
    // Lazy, side by side: the eager copy killed, the same version recovered as a post-copy
    // migration served from the store; its guest must pass the same self-check.
    if (!withLazy) return { firstFullMs: first - start, recoveryMs: info.recoveryMs, loadMs: info.loadMs, writeMs: info.writeMs, startMs: info.startMs, wallMs, versions, versionPages, base: ins.base };
    const lazyRun = async (): Promise<LazyInfo> => {
      process.kill(recoveredPid!, 'SIGKILL');
      const out = execFileSync(process.execPath, [main, 'recover', '--vm', vm, '--redis', url, '--detach', '--lazy'], { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      const r = JSON.parse(out.trim().split('\n').pop()!) as LazyInfo;
      recoveredPid = r.pid;
      await selfCheck(serial, memMiB);
      return r;
    };
    const unindexed = async (): Promise<LazyInfo> => {
      const restore = await stripIndexes(url, vm);
      try {
        return await lazyRun();
      } finally {
        await restore();
      }
    };
    // Alternate the order, so that whatever the first lazy run warms up favours neither.
    let lazy: LazyInfo, old: LazyInfo;
    if (run % 2 === 0) (lazy = await lazyRun()), (old = await unindexed());
    else (old = await unindexed()), (lazy = await lazyRun());
    if (lazy.index !== 'used' || old.index !== 'not used') throw new Error(`page indexes: ${lazy.index} with them, ${old.index} without`);
    return {
      firstFullMs: first - start,
      recoveryMs: info.recoveryMs,
      loadMs: info.loadMs,
      writeMs: info.writeMs,
      startMs: info.startMs,
      wallMs,
      versions,
      versionPages,
      base: ins.base,
      lazyRunningMs: lazy.runningMs,
      lazyResidentMs: lazy.residentMs,
      lazyFaultFrames: lazy.faultFrames,
      lazyFramesBeforeRunning: lazy.framesBeforeRunning,
      lazyFrames: lazy.frames,
      noIndexRunningMs: old.runningMs,
      noIndexResidentMs: old.residentMs,
      noIndexFramesBeforeRunning: old.framesBeforeRunning,
    };
  } finally {
    for (const pid of [recoveredPid, sidecar?.pid]) {
      try {
        if (pid) process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await g.stop();
    execFileSync(process.execPath, [main, 'delete', '--vm', vm, '--redis', url], { env, stdio: 'ignore' });
    rmSync(state, { recursive: true, force: true });
    rmSync(shm, { recursive: true, force: true });
  }
}

export interface SizeResult { memMiB: number; regionMiB: number; qemu: QemuResult[]; migsafe: MigsafeResult[] }

export async function runRecoveryBench(o: Options): Promise<SizeResult[]> {
  ensureGuestBuilt();
  regionOverride = o.region;
  const work = mkdtempSync(join(tmpdir(), 'migsafe-bench-recovery-'));
  const srv = await startRedisServer({ dir: work });
  const out: SizeResult[] = [];
  try {
    for (const memMiB of o.sizes) {
      const r: SizeResult = { memMiB, regionMiB: regionMiB(memMiB), qemu: [], migsafe: [] };
      // Alternate the two methods so drift on this noisy machine hits both alike.
      for (let i = 0; i < o.runs; i++) {
        note(`bench:recovery ${memMiB} MiB run ${i + 1}/${o.runs}: QEMU's own save + restore`);
        r.qemu.push(await qemuOwn(memMiB, work));
        note(`bench:recovery ${memMiB} MiB run ${i + 1}/${o.runs}: migsafe attach, kill -9, recover`);
        r.migsafe.push(await migsafeEager(memMiB, work, srv.url, i, o.lazy === true));
      }
      out.push(r);
    }
  } finally {
    await srv.stop();
    rmSync(work, { recursive: true, force: true });
  }
  return out;
}

const fmt = (xs: number[]) => {
  const m = median(xs).toFixed(0);
  return xs.length > 1 ? `${m} (${Math.min(...xs).toFixed(0)}–${Math.max(...xs).toFixed(0)})` : m;
};

export function formatRecoveryTable(rs: SizeResult[]): string {
  const lines = [
    'Recovery of a guest with 3/4 of its RAM in use (wset, TCG), ms, median (range) over runs; memory self-check passed in every run',
    '',
    '| RAM MiB | QEMU save | QEMU restore | migsafe first full version | migsafe eager recovery (read+verify / RAM file / QEMU start+load) | migsafe lazy: running / resident | lazy without page indexes: running / resident | eager ÷ QEMU restore | first full ÷ QEMU save | lazy running ÷ eager | lazy running ÷ lazy without indexes |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of rs) {
    const q = (k: keyof QemuResult) => r.qemu.map((x) => x[k]);
    const m = (k: 'firstFullMs' | 'recoveryMs' | 'loadMs' | 'writeMs' | 'startMs' | 'lazyRunningMs' | 'lazyResidentMs' | 'noIndexRunningMs' | 'noIndexResidentMs') => r.migsafe.map((x) => x[k] ?? NaN);
    // Ratios per run (same store, same minute), then their median.
    const ratio = (a: (x: MigsafeResult) => number | undefined, b: (x: MigsafeResult) => number | undefined) => median(r.migsafe.map((x) => (a(x) ?? NaN) / (b(x) ?? NaN))).toFixed(2);
    lines.push(
      `| ${r.memMiB} | ${fmt(q('saveMs'))} | ${fmt(q('restoreMs'))} | ${fmt(m('firstFullMs'))} | ${fmt(m('recoveryMs'))} (${fmt(m('loadMs'))} / ${fmt(m('writeMs'))} / ${fmt(m('startMs'))}) ` +
        `| ${fmt(m('lazyRunningMs'))} / ${fmt(m('lazyResidentMs'))} | ${fmt(m('noIndexRunningMs'))} / ${fmt(m('noIndexResidentMs'))} ` +
        `| ${(median(m('recoveryMs')) / median(q('restoreMs'))).toFixed(2)} | ${(median(m('firstFullMs')) / median(q('saveMs'))).toFixed(2)} ` +
        `| ${ratio((x) => x.lazyRunningMs, (x) => x.recoveryMs)} | ${ratio((x) => x.lazyRunningMs, (x) => x.noIndexRunningMs)} |`,
    );
  }
  lines.push('', 'QEMU restore and migsafe recovery both count from starting QEMU (migsafe: from connecting to the store); lazy (recover --lazy, after the eager one, same store) counts to the guest running and to all memory in; the instance pool (issue 19) is not built yet.');
  return lines.join('\n') + '\n';
}
