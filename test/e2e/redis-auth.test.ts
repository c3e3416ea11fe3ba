// A store that wants credentials: real redis-servers on loopback with `requirepass`, with an ACL
// user (the default user off), and TLS-only with client certificates (certificates made here with
// openssl). Against each a real guest is checkpointed by `migsafe run`; a missing or wrong
// password and a missing CA or client certificate are refused with the fix named; and the
// password is in no process's command line, in QEMU's environment, in any log line.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import { connectRedis, freePort } from '../../src/store/redis-server.js';
import type { RedisAuth } from '../../src/store/redis-url.js';
import { ensureGuestBuilt, guestQemuArgs } from '../helpers/guest.js';
import { alive, cliEnv, killQuietly, runCli, startCli } from '../helpers/cli.js';
import { makeCa, makeCert } from '../helpers/tls.js';
import { waitFor } from '../helpers/wait.js';

ensureGuestBuilt();

const PASS = 'pw-Requirepass-7f3a';
const ALICE = 'pw-Alice-ACL-91c2';

/** A redis-server from a config file (the passwords stay out of its argv), stopped at teardown. */
async function secureRedis(t: Test, conf: (dir: string) => string[], url: (port: number) => string, auth: RedisAuth) {
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-authredis-'));
  const port = await freePort();
  const file = join(dir, 'redis.conf');
  writeFileSync(file, [`dir ${dir}`, 'bind 127.0.0.1', 'save ""', 'appendonly yes', 'appendfsync always', `logfile ${join(dir, 'redis.log')}`, ...conf(dir).map((l) => l.replace('PORT', String(port))), ''].join('\n'));
  chmodSync(file, 0o600);
  const child = spawn('redis-server', [file], { stdio: 'ignore' });
  t.teardown(async () => {
    killQuietly(child.pid, 'SIGTERM');
    for (let i = 0; i < 300 && alive(child.pid!); i++) await sleep(10);
    killQuietly(child.pid);
    rmSync(dir, { recursive: true, force: true });
  });
  const u = url(port);
  await waitFor('the redis-server', 15_000, async () => {
    const r = connectRedis(u, { auth });
    try {
      return (await r.ping()) === 'PONG' ? true : undefined;
    } catch {
      return undefined;
    } finally {
      r.disconnect();
    }
  });
  return { url: u, dir, pid: child.pid! };
}

function cmdline(pid: number): string {
  return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
}

/**
 * `migsafe run` of a small guest against the store until two versions are committed, then
 * SIGTERM. Checks that `secret` shows in no command line, QEMU's environment or log line.
 */
async function checkpointAgainst(t: Test, vm: string, args: string[], env: NodeJS.ProcessEnv, store: { url: string; auth: RedisAuth }, secret: string) {
  const pidfile = join(env.MIGSAFE_STATE_DIR!, 'qemu.pid');
  const serial = join(env.MIGSAFE_STATE_DIR!, 'serial.log');
  const run = startCli(['run', '--vm', vm, ...args, '--interval', '500', '--pidfile', pidfile, '--', ...guestQemuArgs({ workload: 'idle', memMiB: 128, serialLog: serial })], env);
  let qemu = 0;
  t.teardown(() => {
    killQuietly(run.child.pid);
    killQuietly(qemu);
  });
  await waitFor('the pidfile', 30_000, async () => {
    if (run.child.exitCode !== null) throw new Error(`run exited ${run.child.exitCode}: ${run.err()}`);
    return existsSync(pidfile) ? true : undefined;
  });
  qemu = Number(readFileSync(pidfile, 'utf8'));
  const r = connectRedis(store.url, { auth: store.auth });
  t.teardown(() => r.disconnect());
  const s = new CheckpointStore(r, vm);
  const committed = await waitFor('two committed versions', 120_000, async () => {
    // A run that ended (QEMU gone, the store refusing it) says why: fail with that, not a timeout.
    if (run.child.exitCode !== null) throw new Error(`run exited ${run.child.exitCode} before two versions were committed: ${run.err()}`);
    const c = await s.committed();
    return c.length >= 2 ? c : undefined;
  });
  t.ok(committed.length >= 2, `versions ${committed.join(',')} committed through the authenticated store`);
  for (const [who, pid] of [['migsafe run', run.child.pid!], ['QEMU', qemu]] as const) {
    t.notOk(cmdline(pid).includes(secret), `the password is not in ${who}'s /proc/PID/cmdline`);
  }
  t.notOk(readFileSync(`/proc/${qemu}/environ`, 'utf8').includes(secret), "nor in QEMU's environment");
  const ps = await new Promise<string>((res) => {
    let o = '';
    const p = spawn('ps', ['-eo', 'pid,args', '--no-headers'], { stdio: ['ignore', 'pipe', 'ignore'] });
    p.stdout.setEncoding('utf8').on('data', (d: string) => (o += d));
    p.once('exit', () => res(o));
  });
  t.notOk(ps.includes(secret), 'nor anywhere in `ps -eo args`');
  // Private files: the run directory and what is in it (RAM file, QMP socket, QEMU log).
  const runDir = env.MIGSAFE_RUN_DIR!;
  const loose = readdirSync(runDir).filter((f) => statSync(join(runDir, f)).mode & 0o077);
  t.same(loose, [], 'nothing in the run directory is open to group or others');
  run.child.kill('SIGTERM');
  t.equal(await run.exited, 0, 'run stops cleanly on SIGTERM');
  t.notOk(run.rawErr().includes(secret), 'the logs of run do not hold the password');
  return run;
}

t.test('requirepass: a password file or MIGSAFE_REDIS_PASSWORD; none, a wrong one and one on the command line refused', async (t) => {
  const srv = await secureRedis(t, () => ['port PORT', `requirepass ${PASS}`], (p) => `redis://127.0.0.1:${p}`, { password: PASS });
  const env = cliEnv(t);
  const pwFile = join(env.MIGSAFE_STATE_DIR!, 'redis.pass');
  writeFileSync(pwFile, `${PASS}\n`, { mode: 0o600 });

  const none = await runCli(['inspect', '--vm', 'a1', '--redis', srv.url], env, 30_000);
  t.equal(none.code, 2);
  t.match(none.stderr, /Redis at redis:\/\/127\.0\.0\.1:\d+ wants a password \(NOAUTH.*\): give it with --redis-password-file FILE or MIGSAFE_REDIS_PASSWORD/);
  const wrong = await runCli(['inspect', '--vm', 'a1', '--redis', srv.url], { ...env, MIGSAFE_REDIS_PASSWORD: 'not-it' }, 30_000);
  t.equal(wrong.code, 2);
  t.match(wrong.stderr, /refused the credentials \(WRONGPASS.*\): check the password \(--redis-password-file FILE, MIGSAFE_REDIS_PASSWORD, or the URL\)/);
  t.notOk(wrong.rawStderr.includes('not-it'), 'the wrong password is not echoed either');
  const argv = await runCli(['inspect', '--vm', 'a1', '--redis', srv.url, '--redis-password', PASS], env, 30_000);
  t.equal(argv.code, 2);
  t.match(argv.stderr, /--redis-password is refused on the command line, where `ps` shows it to every user/);
  t.notOk(argv.rawStderr.includes(PASS));
  writeFileSync(join(env.MIGSAFE_STATE_DIR!, 'open.pass'), PASS, { mode: 0o644 });
  chmodSync(join(env.MIGSAFE_STATE_DIR!, 'open.pass'), 0o644);
  const open = await runCli(['inspect', '--vm', 'a1', '--redis', srv.url, '--redis-password-file', join(env.MIGSAFE_STATE_DIR!, 'open.pass')], env, 30_000);
  t.match(open.stderr, /other users can read or write it \(mode 644\): `chmod 600 /);

  // doctor checks the store with the same credentials (it only looks: no VM named).
  const redisCheck = (out: string) => (JSON.parse(out) as { checks: { name: string; status: string; message: string; fix?: string }[] }).checks.find((c) => c.name === 'redis')!;
  const docNone = redisCheck((await runCli(['doctor', '--redis', srv.url, '--json'], env, 60_000)).stdout);
  t.equal(docNone.status, 'FAIL');
  t.match(docNone.fix, /--redis-password-file FILE or MIGSAFE_REDIS_PASSWORD/, 'doctor names how to give the password');
  const docPw = redisCheck((await runCli(['doctor', '--redis', srv.url, '--redis-password-file', pwFile, '--json'], env, 60_000)).stdout);
  t.equal(docPw.status, 'ok', `doctor with --redis-password-file: ${docPw.message}`);

  await checkpointAgainst(t, 'a1', ['--redis', srv.url, '--redis-password-file', pwFile], env, { url: srv.url, auth: { password: PASS } }, PASS);

  const shown = await runCli(['inspect', '--vm', 'a1', '--redis', srv.url], { ...env, MIGSAFE_REDIS_PASSWORD: PASS }, 30_000);
  t.equal(shown.code, 0, shown.stderr);
  t.match(shown.stdout, /QEMU: \d+ argument\(s\) recorded \(inspect --argv shows them\)/, 'the QEMU command line is not shown by default');
  t.notMatch(shown.stdout, /qemu-system/);
  const json = JSON.parse((await runCli(['inspect', '--vm', 'a1', '--redis', srv.url, '--json'], { ...env, MIGSAFE_REDIS_PASSWORD: PASS }, 30_000)).stdout) as { argv?: string[]; versions: unknown[] };
  t.equal(json.argv, undefined, 'nor in --json');
  t.ok(json.versions.length >= 2);
  const withArgv = await runCli(['inspect', '--vm', 'a1', '--redis', srv.url, '--argv'], { ...env, MIGSAFE_REDIS_PASSWORD: PASS }, 30_000);
  t.match(withArgv.stdout, /QEMU: qemu-system-x86_64 /, 'inspect --argv shows it');
});

t.test('an ACL user (default user off, no CONFIG): in the URL, masked in ps; a wrong password refused', async (t) => {
  const srv = await secureRedis(
    t,
    () => ['port PORT', 'user default off', `user alice on >${ALICE} ~migsafe:* &* +@all -config`],
    (p) => `redis://127.0.0.1:${p}`,
    { username: 'alice', password: ALICE },
  );
  const env = cliEnv(t);
  const wrong = await runCli(['inspect', '--vm', 'b1', '--redis', srv.url.replace('//', '//alice:nope@')], env, 30_000);
  t.equal(wrong.code, 2);
  t.match(wrong.stderr, /refused the credentials \(WRONGPASS/);
  t.match(wrong.stderr, /redis:\/\/alice:\*\*\*@127\.0\.0\.1/, 'the URL is shown with its password masked');
  const url = srv.url.replace('//', `//alice:${ALICE}@`);
  const run = await checkpointAgainst(t, 'b1', ['--redis', url], env, { url: srv.url, auth: { username: 'alice', password: ALICE } }, ALICE);
  t.match(run.err(), /commits count when/, 'durability settled without CONFIG (auto: none)');
  // --redis-user with the password from the environment, as a second writer after the first.
  const shown = await runCli(['inspect', '--vm', 'b1', '--redis', srv.url, '--redis-user', 'alice'], { ...env, MIGSAFE_REDIS_PASSWORD: ALICE }, 30_000);
  t.equal(shown.code, 0, shown.stderr);
  t.match(shown.stdout, /VM b1: .* committed version/);
  // The fleet commands log in the same way; the URL they print has its password masked.
  const st = await runCli(['status', '--redis', url, '--no-agents', '--json'], env, 30_000);
  t.equal(st.code, 0, st.stderr);
  const fleet = JSON.parse(st.stdout) as { store: string; vms: { vm: string }[] };
  t.same(fleet.vms.map((v) => v.vm), ['b1'], 'status lists the VM as the ACL user');
  t.match(fleet.store, /^redis:\/\/alice:\*\*\*@127\.0\.0\.1:\d+$/);
  const gc = await runCli(['gc', '--redis', srv.url, '--redis-user', 'alice', '--dry-run', '--json'], { ...env, MIGSAFE_REDIS_PASSWORD: ALICE }, 30_000);
  t.equal(gc.code, 0, gc.stderr);
  t.notOk(st.stdout.includes(ALICE) || gc.stdout.includes(ALICE) || st.rawStderr.includes(ALICE) || gc.rawStderr.includes(ALICE), 'status and gc print no password');
});

t.test('TLS only (rediss://, client certificates demanded): --redis-ca, --redis-cert, --redis-key', async (t) => {
  const pki = mkdtempSync(join(tmpdir(), 'migsafe-redis-pki-'));
  t.teardown(() => rmSync(pki, { recursive: true, force: true }));
  const ca = makeCa(join(pki, 'ca'));
  const server = makeCert(ca, join(pki, 'server'), { cn: 'redis', ips: ['127.0.0.1'] });
  const client = makeCert(ca, join(pki, 'client'), { cn: 'migsafe' });
  const tlsAuth: RedisAuth = { password: PASS, tls: { ca: readFileSync(ca.cert), cert: readFileSync(join(client, 'cert.pem')), key: readFileSync(join(client, 'key.pem')) } };
  const srv = await secureRedis(
    t,
    () => ['port 0', 'tls-port PORT', `tls-cert-file ${server}/cert.pem`, `tls-key-file ${server}/key.pem`, `tls-ca-cert-file ${ca.cert}`, 'tls-auth-clients yes', `requirepass ${PASS}`],
    (p) => `rediss://127.0.0.1:${p}`,
    tlsAuth,
  );
  const env = { ...cliEnv(t), MIGSAFE_REDIS_PASSWORD: PASS };
  const noCa = await runCli(['inspect', '--vm', 'c1', '--redis', srv.url], env, 30_000);
  t.equal(noCa.code, 2);
  t.match(noCa.stderr, /TLS to Redis at rediss:\/\/127\.0\.0\.1:\d+ failed .*give the CA that signed the server's certificate with --redis-ca FILE/);
  const noCert = await runCli(['inspect', '--vm', 'c1', '--redis', srv.url, '--redis-ca', ca.cert], env, 30_000);
  t.equal(noCert.code, 2);
  t.match(noCert.stderr, /--redis-cert FILE and --redis-key FILE/, 'a server demanding a client certificate: the fix is named');
  const plain = await runCli(['inspect', '--vm', 'c1', '--redis', srv.url.replace('rediss', 'redis'), '--redis-ca', ca.cert], env, 30_000);
  t.match(plain.stderr, /--redis-ca is for TLS: use a rediss:\/\/HOST:PORT URL/);
  const tlsArgs = ['--redis', srv.url, '--redis-ca', ca.cert, '--redis-cert', join(client, 'cert.pem'), '--redis-key', join(client, 'key.pem')];
  await checkpointAgainst(t, 'c1', tlsArgs, env, { url: srv.url, auth: tlsAuth }, PASS);
  const shown = await runCli(['inspect', '--vm', 'c1', ...tlsArgs], env, 30_000);
  t.equal(shown.code, 0, shown.stderr);
});
