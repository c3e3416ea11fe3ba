// `migsafe doctor` as a real process: against a real redis-server of the test's own (ok, and
// a FAIL for --durability fsync where it does not fsync), against a port nobody listens on
// (FAIL, exit 1, naming the URL and the fix), and its directory checks on real directories.
import t from 'tap';
import { chmodSync } from 'node:fs';
import { testRedis } from '../helpers/redis.js';
import { freePort } from '../../src/store/redis-server.js';
import { cliEnv, runCli } from '../helpers/cli.js';

interface Report {
  ok: boolean;
  checks: { name: string; status: string; message: string; fix?: string }[];
}
const byName = (r: Report, name: string) => r.checks.find((c) => c.name === name);

t.test('a reachable store: every check reported, none failed', async (t) => {
  const srv = await testRedis(t, 'always');
  const env = cliEnv(t);
  const r = await runCli(['doctor', '--redis', srv.url, '--durability', 'fsync'], env);
  t.equal(r.code, 0, r.stdout + r.stderr);
  for (const name of ['qemu', 'kvm', 'redis', 'durability', 'userfaultfd', 'state-dir', 'run-dir']) {
    t.match(r.stdout, new RegExp(`^(ok|warn)\\s+${name}\\s+\\S`, 'm'), `a line for ${name}`);
  }
  t.match(r.stdout, new RegExp(`^ok\\s+redis\\s+Redis \\d+\\.\\d+\\.\\d+ at ${srv.url} \\(master\\)`, 'm'));
  t.match(r.stdout, /^ok\s+durability\s+commits count when fsync/m);
  t.notMatch(r.stdout, /redis-server /, 'with --redis the redis-server binary is not needed');
  t.match(r.stdout, /no check failed/);
  t.match(r.stdout, new RegExp(`^ok\\s+run-dir\\s+${env.MIGSAFE_RUN_DIR} \\(mode 700, tmpfs\\)`, 'm'), 'the test run dir: /dev/shm, 700');

  const j = await runCli(['doctor', '--redis', srv.url, '--json'], env);
  t.equal(j.code, 0);
  const rep = JSON.parse(j.stdout) as Report;
  t.equal(rep.ok, true);
  t.equal(byName(rep, 'redis')?.status, 'ok');
  t.equal(byName(rep, 'durability')?.status, 'ok', 'auto on a server with appendfsync always: fsync');
});

t.test('--durability fsync on a server that does not fsync each write: FAIL with the setting to change', async (t) => {
  const srv = await testRedis(t, 'everysec');
  const r = await runCli(['doctor', '--redis', srv.url, '--durability', 'fsync'], cliEnv(t));
  t.equal(r.code, 1);
  t.match(r.stdout, /^FAIL\s+durability\s+--durability fsync: Redis at .* has appendonly yes and appendfsync everysec.* — fix: .*appendfsync always/m);
  const auto = await runCli(['doctor', '--redis', srv.url], cliEnv(t));
  t.equal(auto.code, 0, 'auto there is a warning, not a failure');
  t.match(auto.stdout, /^warn\s+durability\s+--durability auto settles to none/m);
});

t.test('an unreachable store: FAIL, exit 1, the URL and the fix', async (t) => {
  const url = `redis://127.0.0.1:${await freePort()}`;
  const r = await runCli(['doctor', '--redis', url], cliEnv(t));
  t.equal(r.code, 1);
  t.match(r.stdout, new RegExp(`^FAIL\\s+redis\\s+cannot reach Redis at ${url}: connect ECONNREFUSED .* — fix: start the server there, or check --redis`, 'm'));
  t.notMatch(r.stdout, /durability/, 'nothing said about a durability it could not check');
  t.match(r.stdout, /1 check\(s\) failed/);
  const j = JSON.parse((await runCli(['doctor', '--redis', url, '--json'], cliEnv(t))).stdout) as Report;
  t.equal(j.ok, false);
  t.equal(byName(j, 'redis')?.status, 'FAIL');
});

t.test('no --redis: the redis-server binary, its own server not started; a run dir others can read', async (t) => {
  const env = cliEnv(t);
  chmodSync(env.MIGSAFE_RUN_DIR!, 0o755);
  const r = await runCli(['doctor'], env);
  t.equal(r.code, 0, r.stdout);
  t.match(r.stdout, /^ok\s+redis-server\s+\/\S+redis-server/m);
  t.match(r.stdout, /^ok\s+redis\s+migsafe's own redis-server is not running; it is started at first use/m);
  t.match(r.stdout, new RegExp(`^warn\\s+run-dir\\s+${env.MIGSAFE_RUN_DIR} has mode 755.* — fix: chmod 700 ${env.MIGSAFE_RUN_DIR}`, 'm'));
  const replicas = await runCli(['doctor', '--durability', 'replicas:1'], env);
  t.equal(replicas.code, 1);
  t.match(replicas.stdout, /^FAIL\s+durability\s+--durability replicas:1 with migsafe's own redis-server/m);
});

t.test('--qemu-binary that does not exist: FAIL naming it', async (t) => {
  const r = await runCli(['doctor', '--qemu-binary', '/nonexistent/qemu', '--redis', 'redis://127.0.0.1:1'], cliEnv(t));
  t.equal(r.code, 1);
  t.match(r.stdout, /^FAIL\s+qemu\s+QEMU binary \/nonexistent\/qemu not found — fix: apt-get install qemu-system-x86, or give --qemu-binary PATH/m);
});
