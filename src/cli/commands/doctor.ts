// `migsafe doctor [--redis URL] [--durability D] [--qemu-binary PATH] [--json]`: checks this
// host for what migsafe needs and prints, a line per check, ok / warn / FAIL and the fix. It
// only looks: nothing is started, created or configured (no private redis-server started, no
// directory made, no CONFIG SET). The probes are here; what they mean is doctor-checks.ts.
import { spawnSync } from 'node:child_process';
import { accessSync, closeSync, constants, existsSync, openSync, readFileSync, statSync, statfsSync, unlinkSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CommandModule } from 'yargs';
import { qemuHasFt } from '../../qemu/dirty/open.js';
import { connectRedis, findRedisServer, runningLocalRedis } from '../../store/redis-server.js';
import { parseDurability, settleDurability } from '../../store/durability.js';
import { maskSecrets } from '../../util/logger.js';
import { runDirPath, stateDirPath } from '../context.js';
import { withDurability, withRedis } from '../options.js';
import { redisAuthFrom, withRedisAuth, type RedisAuthArgs } from '../redis-auth.js';
import {
  dirVerdict,
  durabilityVerdict,
  exitCode,
  formatChecks,
  kvmVerdict,
  qemuVerdict,
  redisServerVerdict,
  redisVerdict,
  uffdVerdict,
  type Check,
  type DirProbe,
  type DurabilityProbe,
  type KvmProbe,
  type QemuProbe,
  type RedisProbe,
  type UffdProbe,
} from '../doctor-checks.js';

interface DoctorArgs extends RedisAuthArgs {
  redis?: string;
  durability: string;
  'qemu-binary': string;
  json: boolean;
}

/** The repository (dist/src/cli/commands/doctor.js → four up): where set-up builds the patched QEMU. */
const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..');
const uid = process.geteuid?.() ?? 0;
/** A store that does not answer in this long is reported unreachable (ioredis' own connect timeout is 10 s). */
const REDIS_TIMEOUT_MS = 5000;

function onPath(bin: string): string | undefined {
  if (bin.includes('/')) {
    try {
      accessSync(bin, constants.X_OK);
      return resolve(bin);
    } catch {
      return undefined;
    }
  }
  const r = spawnSync('sh', ['-c', 'command -v "$1"', 'sh', bin], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() || undefined : undefined;
}

function probeQemu(binary: string): QemuProbe {
  const path = onPath(binary);
  if (!path) return { binary, hasFt: false };
  const r = spawnSync(path, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) return { binary, path, hasFt: false, error: (r.error?.message ?? r.stderr.trim()) || `exit ${r.status}` };
  const hasFt = qemuHasFt(path);
  const patched = join(process.env.MIGSAFE_QEMU_PREFIX ?? join(REPO, '.cache', 'qemu'), 'bin', 'qemu-system-x86_64');
  const patchedAt = !hasFt && resolve(patched) !== path && onPath(patched) && qemuHasFt(patched) ? patched : undefined;
  return { binary, path, version: r.stdout.split('\n')[0]!.trim(), hasFt, ...(patchedAt ? { patchedAt } : {}) };
}

/** Runs a perl one-liner (perl-base is essential on Debian; node has no ioctl or raw syscall): its stdout, or undefined. */
function perl(script: string): string | undefined {
  const r = spawnSync('perl', ['-e', script], { encoding: 'utf8', timeout: 10_000 });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

function probeKvm(): KvmProbe {
  if (!existsSync('/dev/kvm')) return { exists: false, uid };
  try {
    closeSync(openSync('/dev/kvm', 'r+'));
  } catch (e) {
    return { exists: true, openError: (e as NodeJS.ErrnoException).code ?? String(e), uid };
  }
  // KVM_CREATE_VM (_IO(0xAE, 1)): a /dev/kvm that opens can still refuse VMs (no VT-x in a guest).
  const createVm = perl('open(my $f, "+<", "/dev/kvm") or die; my $vm = ioctl($f, 0xAE01, 0); print defined $vm ? "ok" : "$!"');
  return { exists: true, uid, ...(createVm !== undefined ? { createVm } : {}) };
}

/** userfaultfd(2)'s number, per architecture; others are not probed. */
const UFFD_SYSCALL: Partial<Record<string, number>> = { x64: 323, arm64: 282 };

function probeUffd(): UffdProbe {
  let unprivileged: string | undefined;
  try {
    unprivileged = readFileSync('/proc/sys/vm/unprivileged_userfaultfd', 'utf8').trim();
  } catch {
    /* an older kernel: no such sysctl */
  }
  const devExists = existsSync('/dev/userfaultfd');
  let devAccess = false;
  try {
    accessSync('/dev/userfaultfd', constants.R_OK | constants.W_OK);
    devAccess = true;
  } catch {
    /* absent or not ours */
  }
  const nr = UFFD_SYSCALL[process.arch];
  // Flags O_CLOEXEC | O_NONBLOCK, as QEMU's post-copy opens it (no UFFD_USER_MODE_ONLY: QEMU needs kernel faults).
  const syscall =
    nr === undefined ? undefined : perl(`use Errno; my $fd = syscall(${nr}, 0x80800); if ($fd >= 0) { print "ok" } else { my ($n) = grep { $!{$_} } keys %!; print $n // "errno " . ($! + 0) }`);
  return { unprivileged, devExists, devAccess, root: uid === 0, uid, ...(syscall !== undefined ? { syscall } : {}) };
}

function probeDir(path: string): DirProbe {
  let st;
  try {
    st = statSync(path);
  } catch {
    let parent = dirname(path);
    while (!existsSync(parent) && parent !== dirname(parent)) parent = dirname(parent);
    let creatable = false;
    try {
      accessSync(parent, constants.W_OK | constants.X_OK);
      creatable = true;
    } catch {
      /* not ours */
    }
    return { path, exists: false, creatable, uid };
  }
  if (!st.isDirectory()) return { path, exists: true, isDir: false, uid };
  // Tried, not access(2): a read-only mount or a full disk says so only on a write.
  let writable = false;
  const probe = join(path, `.migsafe-doctor-${process.pid}`);
  try {
    closeSync(openSync(probe, 'wx', 0o600));
    unlinkSync(probe);
    writable = true;
  } catch {
    /* reported */
  }
  let tmpfs: boolean | undefined;
  try {
    tmpfs = statfsSync(path).type === 0x01021994; // TMPFS_MAGIC
  } catch {
    /* unknown */
  }
  return { path, exists: true, isDir: true, writable, owner: st.uid, mode: st.mode, uid, ...(tmpfs !== undefined ? { tmpfs } : {}) };
}

function withTimeout<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p,
    new Promise<never>((_r, rej) => (timer = setTimeout(() => rej(new Error(`no answer to ${what} in ${REDIS_TIMEOUT_MS / 1000} s`)), REDIS_TIMEOUT_MS))),
  ]).finally(() => clearTimeout(timer));
}

async function probeStore(a: DoctorArgs): Promise<Check[]> {
  const choice = parseDurability(a.durability);
  const own = a.redis === undefined;
  const sock = own ? runningLocalRedis(stateDirPath()) : undefined;
  const url = own ? (sock ?? join(stateDirPath(), 'redis', 'redis.sock')) : a.redis!;
  const shown = maskSecrets(url);
  const checks: Check[] = own ? [redisServerVerdict(findRedisServer())] : [];
  const r: RedisProbe = { url: shown, own, reachable: false, ...(own ? { running: sock !== undefined } : {}) };
  const d: DurabilityProbe = { spec: a.durability, choice, own };
  if (!own || sock) {
    const redis = connectRedis(url, { retry: false, auth: redisAuthFrom(a) });
    // ioredis fails the PING with "Connection is closed."; the socket's error says why (ECONNREFUSED, ...).
    let cause: Error | undefined;
    redis.on('error', (e: Error) => (cause ??= e));
    try {
      await withTimeout(redis.ping(), 'PING');
      r.reachable = true;
      const server = String(await withTimeout(redis.info('server'), 'INFO'));
      const repl = String(await withTimeout(redis.info('replication'), 'INFO'));
      r.version = /^redis_version:(\S+)/m.exec(server)?.[1];
      r.role = /^role:(\w+)/m.exec(repl)?.[1];
      d.replicas = Number(/^connected_slaves:(\d+)/m.exec(repl)?.[1] ?? 0);
      // own=false: only read the server's persistence, never set it (doctor looks, it does not touch).
      if (!own) d.settled = await withTimeout(settleDurability(redis, choice, false, shown), 'CONFIG GET');
    } catch (e) {
      if (r.reachable) d.error = (e as Error).message;
      else r.error = (cause ?? (e as Error)).message;
    } finally {
      redis.disconnect();
    }
  }
  checks.push(redisVerdict(r));
  if (own || r.reachable) checks.push(durabilityVerdict(d));
  return checks;
}

export const doctorCommand: CommandModule<object, DoctorArgs> = {
  command: 'doctor',
  describe: 'Check this host for what migsafe needs (QEMU, KVM, the store, userfaultfd, directories) and say what to fix',
  builder: (y) =>
    withDurability(withRedisAuth(withRedis(y)))
      .option('qemu-binary', { type: 'string', default: 'qemu-system-x86_64', describe: 'the QEMU to check (a name on PATH or a path)' })
      .option('json', { type: 'boolean', default: false, describe: 'print {ok, checks: [{name, status, message, fix}]}' })
      .usage('$0 doctor [--redis URL] [--durability D] [--qemu-binary PATH] [--json]')
      .epilogue(
        'A line per check: ok, warn (works, but slower or without a feature) or FAIL (a command will not work), with the fix. ' +
          'Exit status 1 when a check fails. Nothing is started or changed: without --redis, migsafe\'s own redis-server is checked only if it runs.',
      ) as never,
  handler: async (a) => {
    const checks: Check[] = [
      qemuVerdict(probeQemu(a['qemu-binary'])),
      kvmVerdict(probeKvm()),
      ...(await probeStore(a)),
      uffdVerdict(probeUffd()),
      dirVerdict('state', probeDir(stateDirPath())),
      dirVerdict('run', probeDir(runDirPath())),
    ];
    const code = exitCode(checks);
    process.stdout.write(a.json ? JSON.stringify({ ok: code === 0, checks }, null, 2) + '\n' : formatChecks(checks));
    process.exitCode = code;
  },
};
