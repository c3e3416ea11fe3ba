// Lazy recovery (`migsafe recover --lazy`): the guest runs before its memory is all read. The
// recovered QEMU is an ordinary post-copy migration destination (`-incoming`, postcopy-ram) and
// migsafe is its source: it sends the checkpoint's device state at once, then serves the pages
// the guest faults on out of the store while the rest stream in behind them, newest versions
// first. No QEMU patch: this is QEMU's own post-copy, with the store in the source's place.
import { rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { createRamFile, launchQemu, RAM_BACKEND_ID, type LaunchedQemu } from '../qemu/launch.js';
import { QmpClient, type QmpEvent } from '../qemu/qmp.js';
import { listsOf, loadNewestFirst, readDeviceState } from '../store/lazy-image.js';
import { FaultFetcher, loadIndexes, type FaultStats } from '../store/lazy-fetch.js';
import { planRestore } from '../store/reader.js';
import { PostcopySource, type PostcopyStats } from './postcopy-source.js';
import { deviceSections, PAGE_SIZE, type RamBlockInfo } from './postcopy-stream.js';
import type { Recovered, RecoverOptions } from './recover.js';

export interface RecoveredLazy extends Recovered {
  /**
   * runningMs: recovery start → guest running; residentMs: → every page in, migration completed.
   * Where runningMs goes: qemuMs (→ QEMU's QMP answers), incomingMs (→ the migration stream
   * connected, device state sent), firstRequestMs (→ QEMU's first page request; 0: none).
   */
  timings: Recovered['timings'] & { runningMs: number; residentMs: number; qemuMs: number; incomingMs: number; firstRequestMs: number };
  postcopy: PostcopyStats;
  /**
   * The page indexes: used (faults fetched out of turn), or why not. framesBeforeRunning: frame
   * reads (the background read's and the fault path's: a frame may be read by both) before the
   * guest ran; `frames`: the frames of the plan.
   */
  index: { used: boolean; why?: string; faults: FaultStats; framesBeforeRunning: number; frames: number };
}

export interface LazyOptions extends RecoverOptions {
  /** The guest runs (before its memory is resident): runningMs. */
  onRunning?: (runningMs: number) => void;
  /** The page indexes are not used, and why (a version without one, or one refused). */
  onNoIndex?: (why: string) => void;
}

/** QEMU's RAM blocks from HMP `info ramblock` (QMP has no command for them in 7.2 or 8.1). */
export function parseRamBlocks(text: string): { name: string; pageSize: number; bytes: number }[] {
  const out: { name: string; pageSize: number; bytes: number }[] = [];
  const unit: Record<string, number> = { KiB: 1024, MiB: 1 << 20, GiB: 1 << 30 };
  for (const line of text.split(/\r?\n/)) {
    const m = /^\s*(\S+)\s+(\d+)\s+(KiB|MiB|GiB)\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+0x[0-9a-f]+\s*$/i.exec(line);
    if (m) out.push({ name: m[1]!, pageSize: Number(m[2]) * unit[m[3]!]!, bytes: Number.parseInt(m[4]!, 16) });
  }
  return out;
}

async function connectUnix(path: string, timeoutMs: number): Promise<Socket> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const s = connect(path);
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`QEMU's incoming migration socket ${path}: ${(e as Error).message}`);
      await sleep(10);
    }
  }
}

export async function recoverVmLazy(o: LazyOptions): Promise<RecoveredLazy> {
  const t0 = performance.now();
  const t0Wall = Date.now();
  const plan = await planRestore(o.store, o.version);
  o.onPlan?.(plan);
  // The device state is needed first and is small; it is checked before anything starts.
  // The page indexes beside it (small too): with them a fault fetches just its page's frames.
  const lists = await listsOf(o.store, plan);
  const [deviceState, indexed] = await Promise.all([readDeviceState(o.store, plan), loadIndexes(o.store, plan, lists)]);
  deviceSections(deviceState);
  if ('why' in indexed) o.onNoIndex?.(indexed.why);
  const ramBytes = plan.vm.ramBytes;
  const image = Buffer.alloc(ramBytes);
  const frames = lists.reduce((a, l) => a + l.expect, 0);
  const step = (done: number, phase: string) => {
    try {
      o.onStep?.({ op: 'recovery', unit: 'steps', done, total: 3, phase, version: plan.target.version });
    } catch {
      /* progress is news only */
    }
  };

  const argv = [...plan.vm.argv];
  if (o.qemuBinary) argv[0] = o.qemuBinary;
  const ft = o.ft?.(argv[0]!) ?? false;
  createRamFile(o.paths.ram, ramBytes);
  step(0, 'starting QEMU');
  const qemu = launchQemu({ argv, ramBytes, paths: o.paths, incoming: true, logFd: o.logFd, cwd: plan.vm.cwd, ft, diesWithMigsafe: o.diesWithMigsafe });
  let qmp: QmpClient | undefined;
  let source: PostcopySource | undefined;
  let failure: Error | undefined;
  const kill = (e: Error) => {
    failure ??= e;
    source?.fail(e);
    killQemu(qemu);
  };

  // Reading starts now, beside QEMU's start; a page that fails its check kills the VM at once.
  let tLoaded = 0;
  const ready: number[][] = [];
  const onReady = (pages: number[]) => (source ? source.markReady(pages) : ready.push(pages));
  const final = new Uint8Array(ramBytes / PAGE_SIZE);
  const faultStore = 'indexes' in indexed ? o.store.duplicate() : undefined;
  const fetcher =
    'indexes' in indexed ? new FaultFetcher({ store: faultStore!, lists, indexes: indexed.indexes, image, final, onReady, onError: (e) => kill(e) }) : undefined;
  if (fetcher) onReady(fetcher.placeZeroPages());
  let loaderFrames = 0;
  let guestRunning = false;
  const loading = loadNewestFirst(o.store, plan, image, {
    onReady,
    onProgress: (p) => {
      loaderFrames = p.done;
      o.onProgress?.(p);
    },
    stopped: () => failure !== undefined,
    // Until the guest runs, a fault (QEMU loading the device state, the guest's first steps)
    // goes before the read; after, both go on side by side — paused at every fault, the read
    // was starved by a running guest's faults (all memory in took twice as long).
    ...(fetcher && 'indexes' in indexed ? { indexed: { indexes: indexed.indexes, final }, pause: () => (guestRunning ? undefined : fetcher.busy()) } : {}),
  }).then(
    (r) => {
      tLoaded = performance.now();
      if (source) source.markAllReady();
      return r;
    },
    (e: Error) => {
      kill(e);
      throw e;
    },
  );
  loading.catch(() => {});
  const exited = qemu.exited.then((c) => {
    throw new Error(`QEMU exited (${c}) during lazy recovery: see its log`);
  });
  exited.catch(() => {});
  const race = <T>(p: Promise<T>) => Promise.race([p, exited, loading.then(() => new Promise<never>(() => {}))]);

  let firstRequestAt = 0;
  try {
    qmp = await race(QmpClient.connect(o.paths.qmp, 30_000));
    const tQmp = performance.now();
    // When the guest ran, by QEMU's clock: the RESUME event's timestamp. The reply to a
    // query-status may come much later — the main loop can be waiting for a page a vCPU's
    // I/O touched while holding the big lock.
    let resumedAt: number | undefined;
    qmp.on('event', (ev: QmpEvent) => {
      if (ev.event === 'RESUME' && resumedAt === undefined && ev.timestamp) resumedAt = ev.timestamp.seconds * 1000 + ev.timestamp.microseconds / 1000;
    });
    step(1, 'post-copy from the store');
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: true }] });
    const blocks = parseRamBlocks(await qmp.execute<string>('human-monitor-command', { 'command-line': 'info ramblock' }));
    const guest = blocks.find((b) => b.name === RAM_BACKEND_ID);
    if (!guest) throw new Error(`QEMU has no RAM block "${RAM_BACKEND_ID}" (info ramblock: ${blocks.map((b) => b.name).join(', ') || 'nothing'})`);
    if (guest.bytes !== ramBytes) throw new Error(`QEMU's RAM block is ${guest.bytes} bytes, the checkpoint's RAM ${ramBytes}`);
    const huge = blocks.find((b) => b.pageSize !== PAGE_SIZE);
    if (huge) throw new Error(`RAM block ${huge.name} has ${huge.pageSize}-byte pages: lazy recovery serves 4 KiB pages only (recover without --lazy)`);
    const others: RamBlockInfo[] = blocks.filter((b) => b !== guest).map((b) => ({ name: b.name, bytes: b.bytes }));

    const migPath = `${o.paths.qmp}.mig`;
    await qmp.execute('migrate-incoming', { uri: `unix:${migPath}` });
    const sock = await race(connectUnix(migPath, 10_000));
    rmSync(migPath, { force: true }); // QEMU listens for one connection: this was it
    source = new PostcopySource({
      block: RAM_BACKEND_ID,
      image,
      others,
      deviceState,
      onMiss: (p) => fetcher?.want(p),
    });
    if (failure) throw failure;
    sock.once('data', () => (firstRequestAt = performance.now()));
    source.attach(sock);
    const tAttached = performance.now();
    for (const pages of ready.splice(0)) source.markReady(pages);
    if (tLoaded) source.markAllReady();

    // Running: QEMU starts the guest once it has loaded the package (POSTCOPY_RUN). Its main
    // loop may meanwhile wait for a page a device's state refers to: no QMP timeout while pages
    // are still coming (a failed read kills QEMU, which ends the wait).
    const slow = { timeoutMs: 0 };
    for (;;) {
      const st = await race(qmp.execute<{ status: string; running: boolean }>('query-status', undefined, slow));
      if (st.running) break;
      if (st.status === 'paused' || st.status === 'postmigrate') {
        const m = await qmp.execute<{ status?: string }>('query-migrate', undefined, slow);
        if (m.status === 'postcopy-active' || m.status === 'completed') {
          await qmp.execute('cont');
          continue;
        }
      }
      if (failure) throw failure;
      await sleep(5);
    }
    guestRunning = true;
    const runningMs = resumedAt !== undefined ? Math.min(performance.now() - t0, Math.max(0, resumedAt - t0Wall)) : performance.now() - t0;
    step(2, 'guest running, memory arriving');
    o.onRunning?.(runningMs);
    const framesBeforeRunning = loaderFrames + (fetcher?.stats.frames ?? 0);

    const loaded = await race(loading);
    await race(source.finished);
    for (;;) {
      const m = await race(qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate', undefined, slow));
      if (m.status === 'completed') break;
      if (m.status === 'failed' || m.status === 'cancelled') throw new Error(`QEMU's incoming migration ${m.status}${m['error-desc'] ? `: ${m['error-desc']}` : ''}`);
      if (failure) throw failure;
      await sleep(5);
    }
    const residentMs = performance.now() - t0;
    step(3, 'resumed');
    sock.end();
    fetcher?.stop();
    faultStore?.close();
    return {
      plan,
      qemu,
      qmp,
      ft,
      image,
      pagesApplied: loaded.pagesApplied,
      timings: {
        loadMs: tLoaded - t0, writeMs: 0, startMs: runningMs, totalMs: runningMs, runningMs, residentMs,
        qemuMs: tQmp - t0, incomingMs: tAttached - t0, firstRequestMs: firstRequestAt ? firstRequestAt - t0 : 0,
      },
      postcopy: source.stats,
      index: {
        used: fetcher !== undefined,
        ...('why' in indexed ? { why: indexed.why } : {}),
        faults: fetcher?.stats ?? { faults: 0, frames: 0, pages: 0 },
        framesBeforeRunning,
        frames,
      },
    };
  } catch (e) {
    const err = failure ?? (e as Error);
    kill(err);
    qmp?.close();
    fetcher?.stop();
    faultStore?.close();
    throw failure ? new Error(`lazy recovery of version ${plan.target.version} stopped, QEMU (pid ${qemu.pid}) killed: ${failure.message}`) : err;
  }
}

function killQemu(q: LaunchedQemu): void {
  try {
    process.kill(q.pid, 'SIGKILL');
  } catch {
    /* gone */
  }
}
