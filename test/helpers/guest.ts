// The real test guest (test/guest/): where its kernel and initrd are, the QEMU command line
// that boots a workload, reading its serial console, and finding its progress record in a
// RAM image. Protocol and record layout: test/guest/README.md.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

export type GuestWorkload = 'idle' | 'wset' | 'qsort' | 'kv' | 'udp' | 'serve';
export const GUEST_WORKLOADS: readonly GuestWorkload[] = ['idle', 'wset', 'qsort', 'kv', 'udp'];

/** Repository root, found from this file (src: test/helpers, built: dist/test/helpers). */
function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'test', 'guest'))) return dir;
    dir = dirname(dir);
  }
  throw new Error('cannot find the migsafe repository root from ' + fileURLToPath(import.meta.url));
}

export const GUEST_BUILD_COMMAND = 'bash test/guest/build.sh';

export interface GuestManifest {
  kernelPackage: string;
  busyboxPackage: string;
  kernelVersion: string;
  modules: string[];
  workloads: string[];
  builtAt: string;
  inputs: string;
}

export interface GuestArtifacts {
  /** test/guest/out (or $MIGSAFE_GUEST_OUT) */
  dir: string;
  kernel: string;
  initrd: string;
  manifest: GuestManifest;
  /** Absolute path of test/guest/build.sh. */
  buildScript: string;
}

/** Paths of the built guest; throws, naming the build command, when it is not built. */
export function guestArtifacts(): GuestArtifacts {
  const root = repoRoot();
  const dir = process.env.MIGSAFE_GUEST_OUT ?? join(root, 'test', 'guest', 'out');
  const kernel = join(dir, 'vmlinuz');
  const initrd = join(dir, 'initrd.img');
  const manifestPath = join(dir, 'manifest.json');
  const buildScript = join(root, 'test', 'guest', 'build.sh');
  for (const f of [kernel, initrd, manifestPath]) {
    if (!existsSync(f)) {
      throw new Error(
        `the test guest is not built (${f} is missing): run \`${GUEST_BUILD_COMMAND}\` in ${root} ` +
          '(Debian; downloads linux-image-cloud-amd64 and busybox-static with apt-get)',
      );
    }
  }
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as GuestManifest;
  return { dir, kernel, initrd, manifest, buildScript };
}

let builtThisProcess = false;

/**
 * Runs test/guest/build.sh (a no-op in about 0.5 s when nothing changed), then guestArtifacts().
 * Runs the script once per process unless `recheck` is set.
 */
export function ensureGuestBuilt(opts: { recheck?: boolean } = {}): GuestArtifacts {
  if (builtThisProcess && !opts.recheck) return guestArtifacts();
  const script = join(repoRoot(), 'test', 'guest', 'build.sh');
  const r = spawnSync('bash', [script], { encoding: 'utf8', timeout: 600_000 });
  if (r.status !== 0) {
    throw new Error(`\`${GUEST_BUILD_COMMAND}\` failed (status ${r.status ?? r.signal}):\n${r.stderr}`);
  }
  builtThisProcess = true;
  return guestArtifacts();
}

export interface GuestNetOptions {
  /** The -netdev value; must contain id=..., e.g. `user,id=n0` or `socket,id=n0,udp=...`. */
  netdev: string;
  /** MAC address of the virtio-net-pci device (QEMU picks one if absent). */
  mac?: string;
  /** Guest address in CIDR form, e.g. 10.0.2.15/24 (kernel option migsafe.ip). */
  ip?: string;
  /** Default gateway (migsafe.gw). */
  gw?: string;
  /** UDP peer IP:PORT (migsafe.peer): the `udp` workload sends there; others send one datagram a tick. */
  peer?: string;
  /** NIC model, default virtio-net-pci. */
  device?: string;
}

export interface GuestQemuOptions {
  workload: GuestWorkload;
  /** Guest RAM, MiB (-m); the RAM backend migsafe adds must have this size. Default 256. */
  memMiB?: number;
  /** Size of the workload's region, MiB (migsafe.mib); default per workload (idle 1, wset 64, qsort 64, udp 1). */
  workloadMiB?: number;
  /** Serial console (ttyS0) goes to this file. */
  serialLog: string;
  /** Default 'tcg'. */
  accel?: string;
  /** Default 'pc'. */
  machine?: string;
  /** Writes/updates per second for wset (default 200000), kv (100000), qsort (0 = unlimited). */
  rate?: number;
  /** Random seed of the workload (default: from the guest clock). */
  seed?: number;
  /** More kernel command-line words (e.g. `migsafe.entries=50000`). */
  extraAppend?: string;
  netdev?: GuestNetOptions;
  /** QEMU binary, default qemu-system-x86_64. */
  qemu?: string;
}

/** The kernel command line of the guest. */
export function guestAppend(opts: Omit<GuestQemuOptions, 'serialLog'>): string {
  const words = ['console=ttyS0', 'quiet', 'panic=-1', 'transparent_hugepage=never', 'cryptomgr.notests', `migsafe.workload=${opts.workload}`];
  if (opts.workloadMiB !== undefined) words.push(`migsafe.mib=${opts.workloadMiB}`);
  if (opts.rate !== undefined) words.push(`migsafe.rate=${opts.rate}`);
  if (opts.seed !== undefined) words.push(`migsafe.seed=${opts.seed}`);
  if (opts.netdev?.ip) words.push(`migsafe.ip=${opts.netdev.ip}`);
  if (opts.netdev?.gw) words.push(`migsafe.gw=${opts.netdev.gw}`);
  if (opts.netdev?.peer) words.push(`migsafe.peer=${opts.netdev.peer}`);
  if (opts.extraAppend) words.push(opts.extraAppend);
  return words.join(' ');
}

/**
 * QEMU argv (binary first) booting the guest with `workload` — WITHOUT the RAM backend and
 * QMP, which migsafe (or startTestGuest) adds: `-object memory-backend-file,...,share=on
 * -machine memory-backend=<id>` of memMiB MiB, and `-qmp ...`.
 */
/**
 * Below this the test guest does not boot: Debian's cloud kernel (a 14 MB bzImage) unpacked
 * beside its initrd does not fit, the CPU resets before the console prints a line, and under
 * -no-reboot QEMU exits 0 at once — which looks like a guest that shut down (72 MiB failed,
 * 80 MiB booted on this machine; 96 leaves a margin).
 */
export const GUEST_MIN_MEM_MIB = 96;

export function guestQemuArgs(opts: GuestQemuOptions): string[] {
  const g = guestArtifacts();
  const memMiB = opts.memMiB ?? 256;
  if (memMiB < GUEST_MIN_MEM_MIB) {
    throw new Error(`guestQemuArgs: memMiB ${memMiB} is too small for the test guest, which needs ${GUEST_MIN_MEM_MIB} MiB or more (below, QEMU exits 0 before it boots)`);
  }
  const args = [
    opts.qemu ?? 'qemu-system-x86_64',
    '-accel',
    opts.accel ?? 'tcg',
    '-machine',
    opts.machine ?? 'pc',
    '-nodefaults',
    '-no-user-config',
    '-m',
    `${memMiB}M`,
    '-smp',
    '1',
    '-display',
    'none',
    '-serial',
    `file:${opts.serialLog}`,
    '-no-reboot',
    '-kernel',
    g.kernel,
    '-initrd',
    g.initrd,
    '-append',
    guestAppend(opts),
  ];
  if (opts.netdev) {
    const id = /(?:^|,)id=([^,]+)/.exec(opts.netdev.netdev)?.[1];
    if (!id) throw new Error(`netdev "${opts.netdev.netdev}" has no id=...`);
    let dev = `${opts.netdev.device ?? 'virtio-net-pci'},netdev=${id}`;
    if (opts.netdev.mac) dev += `,mac=${opts.netdev.mac}`;
    args.push('-netdev', opts.netdev.netdev, '-device', dev);
  }
  return args;
}

// ---------------------------------------------------------------- console protocol

/** One `MIGSAFE <kind> key=value ...` line. */
export interface ConsoleLine {
  /** progress | ERROR | boot | start | ready | net | warn | exit | udp */
  kind: string;
  fields: Record<string, string>;
  raw: string;
}

export interface ProgressLine {
  workload: string;
  counter: number;
  verified: boolean;
  errors: number;
  ops: number;
  cycles: number;
  uptimeMs: number;
  raw: string;
}

export interface ConsoleError {
  workload: string;
  /** checksum | checksum-summary | unsorted | entry | entry-count | missing-key | insmod | net | config | alloc */
  kind: string;
  /** Region page index, for kind=checksum (and kv entry errors). */
  page?: number;
  fields: Record<string, string>;
  raw: string;
}

export interface ParsedConsole {
  /** Every MIGSAFE line, in order. */
  lines: ConsoleLine[];
  progress: ProgressLine[];
  /** progress[i].counter */
  counters: number[];
  lastCounter: number | null;
  errors: ConsoleError[];
  /** Progress lines with verified=1. */
  verifiedCount: number;
  /** A `MIGSAFE ready` line was seen: the workload's region is initialised. */
  ready: boolean;
  /** The kernel panicked or the workload exited. */
  died: boolean;
}

const LINE_RE = /MIGSAFE (progress|ERROR|boot|start|ready|net|warn|exit|udp)((?: [A-Za-z_][\w.-]*=\S*)*)\s*$/;

/** Parses one line; null when it is not a (complete) protocol line. */
export function parseConsoleLine(line: string): ConsoleLine | null {
  const m = LINE_RE.exec(line.replace(/\r/g, ''));
  if (!m) return null;
  const fields: Record<string, string> = {};
  for (const kv of m[2]!.trim().split(' ')) {
    if (!kv) continue;
    const eq = kv.indexOf('=');
    fields[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return { kind: m[1]!, fields, raw: m[0] };
}

/**
 * Parses the serial console text. Lines that are not protocol lines (kernel messages, a
 * line cut in two by a checkpoint/restore) are ignored; only newline-terminated lines count.
 */
export function parseConsole(text: string): ParsedConsole {
  const out: ParsedConsole = {
    lines: [],
    progress: [],
    counters: [],
    lastCounter: null,
    errors: [],
    verifiedCount: 0,
    ready: false,
    died: /Kernel panic|MIGSAFE exit /.test(text),
  };
  const complete = text.slice(0, text.lastIndexOf('\n') + 1);
  for (const raw of complete.split('\n')) {
    const l = parseConsoleLine(raw);
    if (!l) continue;
    out.lines.push(l);
    const f = l.fields;
    if (l.kind === 'progress') {
      const p: ProgressLine = {
        workload: f.workload ?? '',
        counter: Number(f.counter),
        verified: f.verified === '1',
        errors: Number(f.errors ?? 0),
        ops: Number(f.ops ?? 0),
        cycles: Number(f.cycles ?? 0),
        uptimeMs: Number(f.uptime_ms ?? 0),
        raw: l.raw,
      };
      if (!Number.isFinite(p.counter)) continue;
      out.progress.push(p);
      out.counters.push(p.counter);
      out.lastCounter = p.counter;
      if (p.verified) out.verifiedCount++;
    } else if (l.kind === 'ERROR') {
      const e: ConsoleError = { workload: f.workload ?? '', kind: f.kind ?? '', fields: f, raw: l.raw };
      if (f.page !== undefined) e.page = Number(f.page);
      out.errors.push(e);
    } else if (l.kind === 'ready') {
      out.ready = true;
    }
  }
  return out;
}

export interface WaitOptions {
  pollMs?: number;
  /** Fail early when this process exits. */
  child?: ChildProcess;
}

function tail(text: string, n = 1500): string {
  return text.length > n ? '…' + text.slice(-n) : text;
}

/**
 * Polls the console file until `predicate` holds; resolves with the parsed console.
 * Rejects on timeout (or when `child` exits) with the end of the console in the message.
 */
export async function waitForConsole(
  path: string,
  predicate: (c: ParsedConsole, text: string) => boolean,
  timeoutMs: number,
  opts: WaitOptions = {},
): Promise<ParsedConsole> {
  const deadline = Date.now() + timeoutMs;
  let text = '';
  for (;;) {
    text = existsSync(path) ? readFileSync(path, 'latin1') : '';
    const c = parseConsole(text);
    if (predicate(c, text)) return c;
    const exited = opts.child && (opts.child.exitCode !== null || opts.child.signalCode !== null);
    if (exited || Date.now() >= deadline) {
      const why = exited
        ? `QEMU exited (${opts.child!.exitCode ?? opts.child!.signalCode})`
        : `timed out after ${timeoutMs} ms`;
      throw new Error(`${why} waiting for the guest console ${path}; it ends with:\n${tail(text)}`);
    }
    await sleep(opts.pollMs ?? 100);
  }
}

// ---------------------------------------------------------------- RAM image

export const PAGE_SIZE = 4096;
/** The progress record's 16-byte magic, at a page-aligned guest-physical address. */
export const PROGRESS_MAGIC = Buffer.from('MIGSAFE-PROGRESS', 'latin1');
/** check = counter ^ PROGRESS_CHECK_XOR */
export const PROGRESS_CHECK_XOR = 0x9e3779b97f4a7c15n;
/** First 8 bytes of every page of a workload's region. */
export const REGION_PAGE_MAGIC = Buffer.from('MIGSAFEP', 'latin1');

export interface ProgressRecord {
  /** Byte offset of the record (page-aligned) in the image. */
  offset: number;
  counter: bigint;
  workload: string;
  regionPages: bigint;
}

/** Every valid progress record (magic and check value match) in a RAM image. */
export function findProgressRecords(image: Buffer): ProgressRecord[] {
  const found: ProgressRecord[] = [];
  const m0 = PROGRESS_MAGIC.readBigUInt64LE(0);
  const m1 = PROGRESS_MAGIC.readBigUInt64LE(8);
  for (let off = 0; off + 64 <= image.length; off += PAGE_SIZE) {
    // cheap first test on one byte, then the full magic
    if (image[off] !== 0x4d) continue;
    if (image.readBigUInt64LE(off) !== m0 || image.readBigUInt64LE(off + 8) !== m1) continue;
    const counter = image.readBigUInt64LE(off + 16);
    const check = image.readBigUInt64LE(off + 24);
    if ((counter ^ PROGRESS_CHECK_XOR) !== check) continue;
    const nameBytes = image.subarray(off + 32, off + 48);
    const nul = nameBytes.indexOf(0);
    const workload = nameBytes.subarray(0, nul < 0 ? 16 : nul).toString('latin1');
    found.push({ offset: off, counter, workload, regionPages: image.readBigUInt64LE(off + 48) });
  }
  return found;
}

/**
 * The guest's progress counter at the moment the image was taken (read it from a stopped
 * VM, or a checkpoint), or null if there is no valid record. Throws if several records
 * disagree (a stale copy: the guest is expected to keep exactly one).
 */
export function findProgressInImage(image: Buffer): bigint | null {
  const recs = findProgressRecords(image);
  if (recs.length === 0) return null;
  const counters = new Set(recs.map((r) => r.counter));
  if (counters.size > 1) {
    throw new Error(
      `${recs.length} progress records disagree: ` + recs.map((r) => `@0x${r.offset.toString(16)}=${r.counter}`).join(', '),
    );
  }
  return recs[0]!.counter;
}

export interface RegionPage {
  /** Byte offset (page-aligned) in the image. */
  offset: number;
  /** Page index within the workload's region. */
  index: number;
  /** First 4 letters of the workload name, e.g. "wset". */
  tag: string;
}

/** Pages of workload regions in a RAM image (found by their 16-byte header). */
export function findRegionPages(image: Buffer, workload?: string): RegionPage[] {
  const out: RegionPage[] = [];
  const magic = REGION_PAGE_MAGIC.readBigUInt64LE(0);
  for (let off = 0; off + PAGE_SIZE <= image.length; off += PAGE_SIZE) {
    if (image[off] !== 0x4d || image.readBigUInt64LE(off) !== magic) continue;
    const tag = image.subarray(off + 12, off + 16).toString('latin1').replace(/\0+$/, '');
    if (workload !== undefined && tag !== workload.slice(0, 4)) continue;
    out.push({ offset: off, index: image.readUInt32LE(off + 8), tag });
  }
  return out;
}

// ---------------------------------------------------------------- a guest of the test's own

export interface TestGuest {
  child: ChildProcess;
  /** Guest RAM file in /dev/shm (memory-backend-file, share=on). */
  ramPath: string;
  qmpPath: string;
  serialLog: string;
  argv: string[];
  /** QEMU's stderr so far (for failure messages). */
  stderr(): string;
  /** Kills QEMU (SIGKILL to its process group), waits for it, removes RAM, QMP and log files. */
  stop(): Promise<void>;
}

const WATCHDOG = `
owner=$1 life=$2 ram=$3 qmp=$4; shift 4
"$@" & q=$!
end=$((SECONDS + life))
while kill -0 "$q" 2>/dev/null; do
  if ! kill -0 "$owner" 2>/dev/null || [ "$SECONDS" -ge "$end" ]; then
    kill -9 "$q" 2>/dev/null; wait "$q" 2>/dev/null; rm -f "$ram" "$qmp"; exit 137
  fi
  sleep 0.5
done
wait "$q"`;

const liveGuests = new Set<TestGuest>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const g of liveGuests) {
      try {
        process.kill(-g.child.pid!, 'SIGKILL');
      } catch {
        /* gone */
      }
      rmSync(g.ramPath, { force: true });
      rmSync(g.qmpPath, { force: true });
    }
  });
}

export interface StartTestGuestOptions extends Omit<GuestQemuOptions, 'serialLog'> {
  /** Default: a unique file under the OS temp dir. */
  serialLog?: string;
  /** Keep the serial log after stop() (default: removed). */
  keepSerialLog?: boolean;
  /** Hard upper bound on QEMU's life in seconds, default 900. */
  maxLifetimeSec?: number;
  /** Register stop() as a tap teardown. */
  t?: { teardown(fn: () => unknown): void };
  /**
   * Use this RAM file (e.g. a checkpointed image) instead of a fresh one; it is removed by
   * stop() all the same.
   */
  ramPath?: string;
  /**
   * true: start paused, waiting for device state (`-incoming defer`, configured for a
   * xen-save-devices-state stream): then QMP `migrate-incoming {uri: "exec:cat <file>"}`.
   * A string: a plain `-incoming <uri>` (e.g. `tcp:127.0.0.1:4444` or `defer`), the
   * destination of an ordinary live migration.
   */
  incoming?: boolean | string;
}

/**
 * Boots the guest for a test, with RAM in /dev/shm/migsafe-test-<unique> (share=on) and a
 * QMP socket — what migsafe itself would add. Always stop() it (or pass `t`).
 */
export function startTestGuest(opts: StartTestGuestOptions): TestGuest {
  const unique = `migsafe-test-${process.pid}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  const serialLog = opts.serialLog ?? join(tmpdir(), `${unique}.serial`);
  const ramPath = opts.ramPath ?? join('/dev/shm', unique);
  const qmpPath = join(tmpdir(), `${unique}.qmp`);
  const memMiB = opts.memMiB ?? 256;
  const base = guestQemuArgs({ ...opts, serialLog, memMiB });
  const argv = [
    ...base,
    '-object',
    `memory-backend-file,id=mem,size=${memMiB}M,mem-path=${ramPath},share=on`,
    '-machine',
    'memory-backend=mem',
    '-qmp',
    `unix:${qmpPath},server=on,wait=off`,
  ];
  if (opts.incoming === true) {
    argv.push('-machine', 'suppress-vmdesc=on', '-global', 'migration.send-configuration=off', '-incoming', 'defer');
  } else if (typeof opts.incoming === 'string') {
    argv.push('-incoming', opts.incoming);
  }
  rmSync(serialLog, { force: true });
  // QEMU runs under a small watchdog (its own process group): if this test process dies in
  // any way (even SIGKILL) or maxLifetimeSec passes, QEMU is killed and its RAM file and
  // QMP socket are removed — no orphan VMs, no 256 MiB files left in /dev/shm.
  const child = spawn('bash', ['-c', WATCHDOG, 'migsafe-guest-watchdog', String(process.pid), String(opts.maxLifetimeSec ?? 900), ramPath, qmpPath, ...argv], {
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    if (stderr.length < 20_000) stderr += d;
  });
  const exited = new Promise<void>((res) => {
    if (child.exitCode !== null || child.signalCode !== null) res();
    else child.once('exit', () => res());
  });
  let stopped = false;
  const g: TestGuest = {
    child,
    ramPath,
    qmpPath,
    serialLog,
    argv,
    stderr: () => stderr,
    async stop() {
      if (stopped) return;
      stopped = true;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* already gone */
      }
      await Promise.race([exited, sleep(5000)]);
      liveGuests.delete(g);
      rmSync(ramPath, { force: true });
      rmSync(qmpPath, { force: true });
      if (!opts.keepSerialLog) rmSync(serialLog, { force: true });
    },
  };
  liveGuests.add(g);
  installExitHook();
  opts.t?.teardown(() => g.stop());
  return g;
}

/** Size check helper: the RAM file exists and has the guest's size. */
export function ramFileBytes(g: TestGuest): number {
  return existsSync(g.ramPath) ? statSync(g.ramPath).size : 0;
}

