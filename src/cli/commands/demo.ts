// `migsafe demo`: the whole story on this machine, with real processes — a Linux guest is
// checkpointed into a private Redis, its QEMU is killed with SIGKILL, `migsafe recover`
// brings it back, and the guest's own memory check and progress counter show it went on.
import type { CommandModule } from 'yargs';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { startRedisServer } from '../../store/redis-server.js';

interface DemoArgs {
  workload: string;
  accel: string;
  versions: number;
  keep: boolean;
}

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', 'main.js');
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..');

function say(s: string): void {
  process.stdout.write(`\n== ${s}\n`);
}

function progressLines(serial: string): { counter: number; verified: boolean; line: string }[] {
  const text = existsSync(serial) ? readFileSync(serial, 'latin1') : '';
  return [...text.matchAll(/MIGSAFE progress workload=\S+ counter=(\d+) verified=(\d)[^\r\n]*/g)].map((m) => ({
    counter: Number(m[1]),
    verified: m[2] === '1',
    line: m[0],
  }));
}

function errorLines(serial: string): string[] {
  const text = existsSync(serial) ? readFileSync(serial, 'latin1') : '';
  return text.split('\n').filter((l) => l.includes('MIGSAFE ERROR'));
}

async function until<T>(what: string, ms: number, f: () => T | undefined | false): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`demo: timed out waiting for ${what}`);
    await sleep(200);
  }
}

function cli(args: string[], env: NodeJS.ProcessEnv, echo = true) {
  const child = spawn(process.execPath, [MAIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    if (echo) process.stdout.write(d);
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    err += d;
    if (echo) process.stdout.write(d.replace(/^(?=.)/gm, '   | '));
  });
  const exited = new Promise<number | string>((r) => child.once('exit', (c, s) => r(c ?? s ?? -1)));
  return { child, exited, out: () => out, err: () => err };
}

async function demo(a: DemoArgs): Promise<number> {
  const kernel = join(ROOT, 'test', 'guest', 'out', 'vmlinuz');
  const initrd = join(ROOT, 'test', 'guest', 'out', 'initrd.img');
  if (!existsSync(kernel) || !existsSync(initrd)) {
    throw new Error('the demo guest is not built: run `bash test/guest/build.sh` (or `bash scripts/setup.sh`)');
  }
  const work = mkdtempSync(join(tmpdir(), 'migsafe-demo-'));
  const run = mkdtempSync('/dev/shm/migsafe-demo-');
  // The children's logs are shown to a person: readable lines, though they go through a pipe.
  const env = { MIGSAFE_LOG_FORMAT: 'pretty', ...process.env, MIGSAFE_STATE_DIR: work, MIGSAFE_RUN_DIR: run };
  const serial = join(work, 'guest-console.log');
  const pidfile = join(work, 'qemu.pid');
  const pids: number[] = [];
  say(`starting a private redis-server (data in ${work}/redis)`);
  const redis = await startRedisServer({ dir: join(work, 'redis') });
  try {
    const vm = 'demo';
    const qemu = [
      'qemu-system-x86_64', '-accel', a.accel, '-machine', 'pc', '-nodefaults', '-no-user-config',
      '-m', '256M', '-smp', '1', '-display', 'none', '-serial', `file:${serial}`, '-no-reboot',
      '-kernel', kernel, '-initrd', initrd,
      '-append', `console=ttyS0 quiet panic=-1 migsafe.workload=${a.workload}${a.workload === 'wset' ? ' migsafe.mib=32' : ''}`,
    ];
    say(`migsafe run --vm ${vm} -- ${qemu.join(' ')}`);
    const sidecar = cli(['run', '--vm', vm, '--redis', redis.url, '--interval', '1000', '--pidfile', pidfile, '--', ...qemu], env);
    if (sidecar.child.pid) pids.push(sidecar.child.pid);
    const qemuPid = await until('QEMU to start', 30_000, () => existsSync(pidfile) && Number(readFileSync(pidfile, 'utf8')));
    pids.push(qemuPid);
    await until('the guest workload to report progress', 120_000, () => progressLines(serial).filter((p) => p.verified).length >= 2);
    say('the guest runs its workload and checks its own memory every second:');
    for (const p of progressLines(serial).slice(-2)) process.stdout.write(`   guest> ${p.line}\n`);
    await until(`${a.versions} committed versions`, 120_000, () => (sidecar.err().match(/committed:/g)?.length ?? 0) >= a.versions);

    say('migsafe inspect --vm demo');
    await cli(['inspect', '--vm', vm, '--redis', redis.url], env).exited;

    say(`the failure: kill -9 ${qemuPid} (QEMU)`);
    const beforeKill = progressLines(serial);
    process.kill(qemuPid, 'SIGKILL');
    await sidecar.exited;
    process.stdout.write(`   the guest had printed counter ${beforeKill.at(-1)?.counter ?? 'none'} when it died\n`);

    say(`migsafe recover --vm ${vm} --detach`);
    const rec = cli(['recover', '--vm', vm, '--redis', redis.url, '--detach', '--pidfile', pidfile], env);
    const code = await rec.exited;
    if (code !== 0) throw new Error(`demo: recover failed (exit ${code})`);
    const info = JSON.parse(rec.out().trim().split('\n').pop()!) as { pid: number; version: number };
    pids.push(info.pid);

    await until('the recovered guest to report progress', 120_000, () => progressLines(serial).length >= 3 || errorLines(serial).length > 0);
    const after = progressLines(serial);
    const errors = errorLines(serial);
    say('the recovered guest:');
    for (const p of after.slice(0, 3)) process.stdout.write(`   guest> ${p.line}\n`);
    const ok = errors.length === 0 && after.every((p) => p.verified) && after[0]!.counter > 1;
    say(
      ok
        ? `recovered from version ${info.version}: the guest went on from counter ${after[0]!.counter} with its memory intact`
        : `FAILED: ${errors.length ? errors.join('; ') : 'the guest did not continue from the checkpoint'}`,
    );
    if (a.keep) {
      process.stdout.write(`\nThe recovered VM keeps running (QEMU pid ${info.pid}); its console is ${serial}.\n`);
      pids.length = 0;
    }
    return ok ? 0 : 1;
  } finally {
    for (const p of pids) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    if (!a.keep) {
      await redis.stop();
      rmSync(work, { recursive: true, force: true });
      rmSync(run, { recursive: true, force: true });
    }
  }
}

export const demoCommand: CommandModule<object, DemoArgs> = {
  command: 'demo',
  describe: 'Checkpoint a real guest, kill its QEMU, recover it, and show that it goes on',
  builder: (y) =>
    y
      .option('workload', { choices: ['idle', 'wset', 'qsort', 'kv'], default: 'wset', describe: 'what the guest runs' })
      .option('accel', { type: 'string', choices: ['tcg', 'kvm'], default: 'tcg', describe: 'QEMU accelerator (kvm where it works)' })
      .option('versions', { type: 'number', default: 5, describe: 'committed versions before the failure' })
      .option('keep', { type: 'boolean', default: false, describe: 'leave the recovered VM and Redis running' }) as never,
  handler: async (a) => {
    process.exitCode = await demo(a);
  },
};
