// Starting QEMU with guest RAM in a shared file and a QMP socket that migsafe owns.
import { spawn } from 'node:child_process';
import { openSync, closeSync, existsSync, fchmodSync, ftruncateSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { childEnv } from '../util/process.js';

export const RAM_BACKEND_ID = 'migsafe-ram';

/** Bytes of guest RAM named by QEMU's `-m` option (`-m 256`, `-m 256M`, `-m size=1G,...`). */
export function ramBytesFromArgv(argv: readonly string[]): number {
  let spec: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '-m' || a === '--m') spec = argv[i + 1];
    else if (a.startsWith('-m=')) spec = a.slice(3);
  }
  if (spec === undefined) return 128 * 2 ** 20; // QEMU's default for x86
  const sizePart = spec.split(',').find((p) => !p.includes('=') || p.startsWith('size='));
  const m = /^(?:size=)?(\d+(?:\.\d+)?)([kKmMgGtT]?)[bB]?$/.exec(sizePart ?? '');
  if (!m) throw new Error(`cannot read the guest RAM size from "-m ${spec}": use e.g. -m 256M or -m 1G`);
  const unit = (m[2] || 'M').toUpperCase();
  const mult = { K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 }[unit]!;
  const bytes = Math.round(Number(m[1]) * mult);
  if (bytes % 4096 !== 0) throw new Error(`guest RAM size ${bytes} bytes is not a multiple of 4096`);
  return bytes;
}

/** Refuses command lines that already set up what migsafe adds. */
export function checkUserArgv(argv: readonly string[]): void {
  if (argv.length === 0) throw new Error('no QEMU command line: give it after `--`, e.g. -- qemu-system-x86_64 -m 256M ...');
  for (const a of argv) {
    if (a.includes('memory-backend=')) {
      throw new Error(
        'the QEMU command line already sets -machine memory-backend=...; migsafe puts guest RAM in its own shared file. ' +
          'Remove it, or start QEMU yourself and use `migsafe attach`.',
      );
    }
    if (a === '-qmp' || a.startsWith('-qmp=')) {
      throw new Error('the QEMU command line has -qmp; migsafe adds its own QMP socket. Remove yours, or use `migsafe attach`.');
    }
  }
}

export interface VmPaths {
  /** Guest RAM file (tmpfs), shared with QEMU. */
  ram: string;
  qmp: string;
  /** Scratch file for device state. */
  deviceState: string;
  /** The patched QEMU's migsafe-ft socket. */
  ft: string;
}

export function vmPaths(runDir: string, vmId: string): VmPaths {
  return {
    ram: join(runDir, `${vmId}.ram`),
    qmp: join(runDir, `${vmId}.qmp`),
    deviceState: join(runDir, `${vmId}.devstate`),
    ft: join(runDir, `${vmId}.ft`),
  };
}

/** Creates (or resizes) the RAM file at exactly `bytes`. */
export function createRamFile(path: string, bytes: number): void {
  const fd = openSync(path, 'w+', 0o600);
  try {
    // The mode of open() applies only to a new file: an old one is made private too.
    fchmodSync(fd, 0o600);
    ftruncateSync(fd, bytes);
  } finally {
    closeSync(fd);
  }
}

export interface LaunchOptions {
  argv: readonly string[];
  ramBytes: number;
  paths: VmPaths;
  /** Start waiting for an incoming device-state stream (recovery). */
  incoming?: boolean;
  /**
   * Where QEMU's stdout/stderr go (a file descriptor, or what opens one just before QEMU starts:
   * a recovery refused earlier leaves no log file behind), default: ignored.
   */
  logFd?: number | (() => number);
  /** Working directory of QEMU (the recorded one, on recovery). */
  cwd?: string;
  /** Add the patched QEMU's migsafe-ft object (dirty bitmap) on paths.ft. */
  ft?: boolean;
  /**
   * QEMU dies with this process (SIGKILL on its death, PR_SET_PDEATHSIG through util-linux's
   * setpriv). For an agent: its lease is what lets the VM run here, and once the agent is gone
   * the lease lapses and a peer recovers the VM — a QEMU left behind would run beside that copy.
   */
  diesWithMigsafe?: boolean;
}

/** The full QEMU argv: the user's plus RAM in the shared file and migsafe's QMP socket. */
export function qemuArgv(opts: LaunchOptions): string[] {
  const [bin, ...rest] = opts.argv;
  const args = [
    bin!,
    ...rest,
    '-object',
    `memory-backend-file,id=${RAM_BACKEND_ID},size=${opts.ramBytes},mem-path=${opts.paths.ram},share=on`,
    '-machine',
    `memory-backend=${RAM_BACKEND_ID}`,
    '-qmp',
    `unix:${opts.paths.qmp},server=on,wait=off`,
  ];
  if (opts.ft) args.push('-object', `migsafe-ft,id=migsafe-ft,path=${opts.paths.ft}`);
  if (opts.incoming) {
    // The device-state stream from xen-save-devices-state has no configuration section and no vmdesc.
    args.push('-machine', 'suppress-vmdesc=on', '-global', 'migration.send-configuration=off', '-incoming', 'defer');
  }
  return args;
}

/** util-linux's setpriv (Debian: essential package util-linux). */
const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p)) ?? 'setpriv';

export interface LaunchedQemu {
  pid: number;
  /** Resolves with the exit code (or signal name) when QEMU ends. */
  exited: Promise<number | string>;
  argv: string[];
}

/**
 * Spawns QEMU in its own session so that the VM outlives migsafe if migsafe dies (a `run`
 * sidecar's crash must not take the guest with it), unless `diesWithMigsafe`.
 */
export function launchQemu(opts: LaunchOptions): LaunchedQemu {
  if (existsSync(opts.paths.qmp)) rmSync(opts.paths.qmp);
  const argv = qemuArgv(opts);
  const out = (typeof opts.logFd === 'function' ? opts.logFd() : opts.logFd) ?? 'ignore';
  // setpriv sets the death signal, then execs QEMU: the same process, so the pid is QEMU's.
  const cmd = opts.diesWithMigsafe ? [SETPRIV, '--pdeathsig', 'KILL', '--', ...argv] : argv;
  const child = spawn(cmd[0]!, cmd.slice(1), { detached: true, stdio: ['ignore', out, out], cwd: opts.cwd, env: childEnv() });
  const exited = new Promise<number | string>((resolve) => {
    child.once('exit', (code, signal) => resolve(code ?? signal ?? -1));
    child.once('error', (e) => resolve(`spawn error: ${e.message}`));
  });
  child.unref();
  if (child.pid === undefined) throw new Error(`cannot start QEMU (${argv[0]}): is it installed and on PATH?`);
  return { pid: child.pid, exited, argv };
}

/**
 * The command line of a QEMU someone else started (attach), made reusable for recovery:
 * its own RAM backend and QMP monitors are removed, since recovery adds migsafe's.
 */
export function reusableArgv(argv: readonly string[]): string[] {
  const out: string[] = [];
  let backendId: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const v = argv[i + 1] ?? '';
    if (a === '-object' && /(^|,)qom-type=memory-backend-|^memory-backend-/.test(v) && /(^|,)share=on/.test(v)) {
      backendId = /(?:^|,)id=([^,]+)/.exec(v)?.[1];
      i++;
      continue;
    }
    if (a === '-qmp') {
      i++;
      continue;
    }
    if (a === '-machine' && /memory-backend=/.test(v)) {
      const rest = v.split(',').filter((p) => !p.startsWith('memory-backend='));
      if (rest.length) out.push(a, rest.join(','));
      i++;
      continue;
    }
    if (a === '-incoming') {
      i++;
      continue;
    }
    out.push(a);
  }
  void backendId;
  return out;
}
