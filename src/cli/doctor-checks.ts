// `migsafe doctor`'s verdicts: pure functions from what the probes found (commands/doctor.ts)
// to one line per check — ok, warn (works, but worse or partly) or FAIL (a command will not
// work) — each warn and FAIL with the fix. Kept apart from the probes so that every branch is
// unit-tested without a broken host to hand (test/unit/doctor.test.ts).
import { describeDurability, type Durability, type DurabilityChoice } from '../store/durability.js';

export type Status = 'ok' | 'warn' | 'FAIL';

export interface Check {
  name: string;
  status: Status;
  message: string;
  /** What to do about it (warn and FAIL). */
  fix?: string;
}

const ok = (name: string, message: string): Check => ({ name, status: 'ok', message });
const warn = (name: string, message: string, fix: string): Check => ({ name, status: 'warn', message, fix });
const fail = (name: string, message: string, fix: string): Check => ({ name, status: 'FAIL', message, fix });

export interface QemuProbe {
  /** As given (--qemu-binary). */
  binary: string;
  /** Resolved on PATH; undefined: not found. */
  path?: string;
  /** First line of `--version`; undefined with `error` when it did not run. */
  version?: string;
  error?: string;
  /** `-object help` lists migsafe-ft: the patched build (src/qemu/dirty/open.ts useFt). */
  hasFt: boolean;
  /** A patched build found at $MIGSAFE_QEMU_PREFIX/bin (set-up builds it there), when `binary` is stock. */
  patchedAt?: string;
}

/** The versions the tests and the patch series run on; older ones are not known to work. */
const TESTED_QEMU = [7, 2];

export function qemuVerdict(p: QemuProbe): Check {
  if (!p.path) {
    return fail('qemu', `QEMU binary ${p.binary} not found`, 'apt-get install qemu-system-x86, or give --qemu-binary PATH');
  }
  if (p.version === undefined) {
    return fail('qemu', `${p.path} does not run: ${p.error ?? 'no version'}`, 'reinstall qemu-system-x86, or give --qemu-binary PATH of a working build');
  }
  const m = /version (\d+)\.(\d+)(?:\.(\d+))?/.exec(p.version);
  const v = m ? `${m[1]}.${m[2]}${m[3] ? `.${m[3]}` : ''}` : p.version;
  if (m && (Number(m[1]) < TESTED_QEMU[0]! || (Number(m[1]) === TESTED_QEMU[0] && Number(m[2]) < TESTED_QEMU[1]!))) {
    return warn('qemu', `${p.path}: QEMU ${v}, older than the 7.2 migsafe is tested on`, 'use QEMU 7.2 (Debian bookworm) or newer, or the patched build: bash qemu-patches/build.sh --debian');
  }
  if (p.hasFt) return ok('qemu', `${p.path}: QEMU ${v}, patched (migsafe-ft): dirty pages from QEMU's bitmap`);
  return warn(
    'qemu',
    `${p.path}: QEMU ${v}, stock (no migsafe-ft object): dirty pages are found by comparing all of RAM, so the paused stage grows with the VM`,
    p.patchedAt
      ? `run the patched build already at ${p.patchedAt} (--qemu-binary ${p.patchedAt}, and as QEMU's argv[0])`
      : 'build the patched QEMU (bash qemu-patches/build.sh --debian) and run .cache/qemu/bin/qemu-system-x86_64',
  );
}

export interface KvmProbe {
  exists: boolean;
  /** errno code of opening /dev/kvm read-write (EACCES, ...); undefined: it opened. */
  openError?: string;
  /** KVM_CREATE_VM on it: 'ok', an errno text, or undefined when not tried (no perl to ioctl with). */
  createVm?: string;
  uid: number;
}

export function kvmVerdict(p: KvmProbe): Check {
  const tcg = 'QEMU will have to use TCG (-accel tcg), many times slower';
  if (!p.exists) {
    return warn('kvm', `no /dev/kvm: ${tcg}`, 'enable VT-x/AMD-V (or nested virtualisation) and load kvm_intel or kvm_amd');
  }
  if (p.openError) {
    return warn(
      'kvm',
      `/dev/kvm cannot be opened by uid ${p.uid} (${p.openError}): ${tcg}`,
      p.openError === 'EACCES' || p.openError === 'EPERM' ? 'add the user to group kvm (usermod -aG kvm USER) or run as root' : 'check the kvm module (dmesg | grep -i kvm)',
    );
  }
  if (p.createVm !== undefined && p.createVm !== 'ok') {
    return warn('kvm', `/dev/kvm opens but creating a VM fails (${p.createVm}): ${tcg}`, 'check the kvm module (dmesg | grep -i kvm) and that virtualisation is enabled');
  }
  // A VM that can be created may still not run: under nested virtualisation the test guest was
  // seen to print nothing under -accel kvm where KVM_CREATE_VM succeeded.
  return ok(
    'kvm',
    `KVM answers (/dev/kvm${p.createVm === 'ok' ? ', a VM created' : ' opens'}): use -accel kvm; ` +
      'if a guest prints nothing under it (nested virtualisation), use -accel tcg',
  );
}

export interface RedisProbe {
  /** What --redis named (password masked), or migsafe's own server's socket. */
  url: string;
  /** No --redis: migsafe's own redis-server. */
  own: boolean;
  /** Own server: whether it runs now (it is started at first use). */
  running?: boolean;
  reachable: boolean;
  error?: string;
  version?: string;
  role?: string;
}

export function redisVerdict(p: RedisProbe): Check {
  if (p.own && !p.running) {
    return ok('redis', `migsafe's own redis-server is not running; it is started at first use at ${p.url} (append-only file on)`);
  }
  if (!p.reachable) {
    return fail(
      'redis',
      `cannot reach Redis at ${p.url}: ${p.error ?? 'no answer'}`,
      p.own
        ? `the server of the state directory does not answer: stop it (kill $(cat ${p.url.replace(/redis\.sock$/, 'redis.pid')})) and let migsafe start it again`
        : /NOAUTH|WRONGPASS|invalid (username-)?password/i.test(p.error ?? '')
          ? 'give the password with --redis-password-file FILE or MIGSAFE_REDIS_PASSWORD (and --redis-user NAME for an ACL user)'
          : /certificate|self[- ]signed|UNABLE_TO|ECONNRESET/i.test(p.error ?? '') && p.url.startsWith('rediss://')
            ? "TLS: give the server's CA with --redis-ca FILE, and --redis-cert FILE --redis-key FILE if it demands a client certificate"
            : 'start the server there, or check --redis (redis://HOST:PORT, a socket path, redis+sentinel://...) and the firewall',
    );
  }
  return ok('redis', `Redis ${p.version ?? '?'} at ${p.url}${p.role ? ` (${p.role})` : ''}${p.own ? ", migsafe's own" : ''}`);
}

export interface DurabilityProbe {
  /** --durability as given. */
  spec: string;
  choice: DurabilityChoice;
  own: boolean;
  /** What settleDurability (src/store/durability.ts) made of it against the server, or its refusal. */
  settled?: Durability;
  error?: string;
  /** connected_slaves of the server, for replicas:N. */
  replicas?: number;
}

export function durabilityVerdict(p: DurabilityProbe): Check {
  const c = p.choice;
  if (p.own) {
    if (c.kind === 'replicas') {
      return fail(
        'durability',
        `--durability ${p.spec} with migsafe's own redis-server, which has no replicas: no commit would ever be reported`,
        `give --redis a primary with ${c.replicas} replica(s), or use --durability fsync`,
      );
    }
    // Its own server is switched to appendfsync always (settleDurability with own).
    return ok('durability', `commits count when ${describeDurability(c.kind === 'none' ? c : { kind: 'fsync' })}`);
  }
  if (p.error !== undefined) {
    return fail(
      'durability',
      p.error,
      c.kind === 'replicas'
        ? 'point --redis at the primary (redis+sentinel://.../NAME follows it across failovers)'
        : 'on that server: CONFIG SET appendonly yes and CONFIG SET appendfsync always (and in redis.conf), or use --durability replicas:N or none',
    );
  }
  const d = p.settled;
  if (!d) return warn('durability', `--durability ${p.spec} not checked: the store did not answer`, 'fix the redis check first');
  if (d.kind === 'replicas' && p.replicas !== undefined && p.replicas < d.replicas) {
    return fail(
      'durability',
      `--durability ${p.spec}: the primary has ${p.replicas} replica(s) connected, fewer than ${d.replicas}: every commit would wait ${d.timeoutMs} ms and not be reported`,
      `connect ${d.replicas} replica(s) (REPLICAOF) or lower N`,
    );
  }
  if (c.kind === 'auto' && d.kind === 'none') {
    return warn(
      'durability',
      `--durability auto settles to ${describeDurability(d)} (the server does not fsync each write)`,
      'set appendonly yes and appendfsync always on that server, or run replicas and use --durability replicas:N',
    );
  }
  return ok('durability', `commits count when ${describeDurability(d)}`);
}

/** The redis-server binary, needed only when migsafe starts its own store (no --redis). */
export function redisServerVerdict(path: string | undefined): Check {
  if (!path) {
    return fail('redis-server', 'redis-server not found on PATH, and without --redis migsafe starts its own', 'apt-get install redis-server, or give --redis URL');
  }
  return ok('redis-server', `${path} (for migsafe's own store)`);
}

export interface UffdProbe {
  /** The userfaultfd(2) syscall as QEMU's post-copy calls it: 'ok', an errno name, or undefined (not probed). */
  syscall?: string;
  /** vm.unprivileged_userfaultfd: '0', '1', or undefined (no such sysctl). */
  unprivileged?: string;
  devExists: boolean;
  devAccess: boolean;
  root: boolean;
  uid: number;
}

export function uffdVerdict(p: UffdProbe): Check {
  const sysctl = p.unprivileged === undefined ? '' : `, vm.unprivileged_userfaultfd = ${p.unprivileged}`;
  const dev = p.devExists ? `, /dev/userfaultfd ${p.devAccess ? 'usable' : 'not usable by this user'}` : '';
  const noPostcopy = 'post-copy migration to this host (and its live recovery) would fail';
  if (p.syscall === 'ok') return ok('userfaultfd', `userfaultfd works (post-copy possible)${sysctl}${dev}`);
  if (p.syscall === 'ENOSYS') {
    return warn('userfaultfd', `the kernel has no userfaultfd (ENOSYS): ${noPostcopy}`, 'use --mode precopy, or a kernel built with CONFIG_USERFAULTFD');
  }
  if (p.syscall !== undefined) {
    return warn(
      'userfaultfd',
      `userfaultfd refused to uid ${p.uid} (${p.syscall}${sysctl}): ${noPostcopy}`,
      'run the agent as root, or sysctl -w vm.unprivileged_userfaultfd=1' + (p.devExists && !p.devAccess ? ', or give it access to /dev/userfaultfd (QEMU >= 8.1 uses it)' : ''),
    );
  }
  // Not probed (no perl, or an architecture whose syscall number is not known here).
  if (p.root || p.unprivileged === '1' || p.devAccess) return ok('userfaultfd', `userfaultfd allowed for this user (syscall not probed)${sysctl}${dev}`);
  return warn('userfaultfd', `userfaultfd is likely refused to uid ${p.uid}${sysctl}: ${noPostcopy}`, 'run the agent as root, or sysctl -w vm.unprivileged_userfaultfd=1');
}

export interface DirProbe {
  path: string;
  exists: boolean;
  isDir?: boolean;
  /** A file could be created in it. */
  writable?: boolean;
  /** When it does not exist: the nearest existing parent is writable (migsafe creates it, mode 700). */
  creatable?: boolean;
  owner?: number;
  mode?: number;
  /** statfs: tmpfs (the run directory's guest RAM files want memory, not disk). */
  tmpfs?: boolean;
  uid: number;
}

/** `state`: --state-dir (the private Redis's data); `run`: --run-dir (guest RAM files, sockets). */
export function dirVerdict(which: 'state' | 'run', p: DirProbe): Check {
  const name = `${which}-dir`;
  const opt = `--${which}-dir DIR`;
  if (!p.exists) {
    if (p.creatable) return ok(name, `${p.path} does not exist yet; migsafe creates it (mode 700)`);
    return fail(name, `${p.path} does not exist and cannot be created by uid ${p.uid}`, `mkdir -p ${p.path} && chown ${p.uid} ${p.path}, or give ${opt}`);
  }
  if (!p.isDir) return fail(name, `${p.path} is not a directory`, `remove it, or give ${opt}`);
  if (!p.writable) return fail(name, `${p.path} is not writable by uid ${p.uid}`, `chown ${p.uid} ${p.path} && chmod 700 ${p.path}, or give ${opt}`);
  const mode = (p.mode ?? 0) & 0o777;
  const shown = mode.toString(8).padStart(3, '0');
  const what = which === 'run' ? 'guest RAM files and QMP sockets' : "the store's data";
  if (p.owner !== undefined && p.owner !== p.uid) {
    return warn(name, `${p.path} is owned by uid ${p.owner}, not uid ${p.uid} that runs migsafe`, `chown ${p.uid} ${p.path}`);
  }
  if (mode & 0o077) return warn(name, `${p.path} has mode ${shown}: other users can reach ${what}`, `chmod 700 ${p.path}`);
  if (which === 'run' && p.tmpfs === false) {
    return warn(name, `${p.path} is not on tmpfs: guest RAM would be a disk file`, `give --run-dir a directory under /dev/shm`);
  }
  return ok(name, `${p.path} (mode ${shown}${which === 'run' && p.tmpfs ? ', tmpfs' : ''})`);
}

/** 1 when any check failed. */
export function exitCode(checks: readonly Check[]): 0 | 1 {
  return checks.some((c) => c.status === 'FAIL') ? 1 : 0;
}

/** One line per check, then a summary. */
export function formatChecks(checks: readonly Check[]): string {
  const w = Math.max(...checks.map((c) => c.name.length));
  const lines = checks.map((c) => `${c.status.padEnd(4)}  ${c.name.padEnd(w)}  ${c.message}${c.fix ? ` — fix: ${c.fix}` : ''}`);
  const failed = checks.filter((c) => c.status === 'FAIL').length;
  const warned = checks.filter((c) => c.status === 'warn').length;
  lines.push(failed ? `${failed} check(s) failed, ${warned} warning(s)` : `no check failed, ${warned} warning(s)`);
  return lines.join('\n') + '\n';
}
