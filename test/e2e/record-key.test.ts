// --record-key (src/store/record-mac.ts): recovery starts the QEMU command line the store
// records, so with the key a recovery refuses a record that was changed in the store — nothing
// runs, no RAM file is written — and recovers one that verifies. A real guest, a real
// redis-server, the real CLI.
import t from 'tap';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import { vmKeys } from '../../src/store/keys.js';
import { ensureGuestBuilt, guestQemuArgs, parseConsole, waitForConsole } from '../helpers/guest.js';
import { testClient, testRedis } from '../helpers/redis.js';
import { alive, cliEnv, runCli, startOwnedCli } from '../helpers/cli.js';
import { waitFor } from '../helpers/wait.js';

ensureGuestBuilt();

t.test('a record changed in the store is refused under --record-key; the signed one recovers', async (t) => {
  const srv = await testRedis(t);
  const env = cliEnv(t);
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-rkey-e2e-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const keyFile = join(dir, 'record.key');
  writeFileSync(keyFile, `${'9f'.repeat(32)}\n`, { mode: 0o600 });
  const serial = join(dir, 'guest.serial');
  const pidfile = join(dir, 'qemu.pid');
  const run = startOwnedCli(
    t,
    ['run', '--vm', 'k1', '--redis', srv.url, '--record-key', keyFile, '--interval', '500', '--pidfile', pidfile, '--',
      ...guestQemuArgs({ workload: 'wset', workloadMiB: 2, serialLog: serial })],
    env,
    pidfile,
  );
  let qemuPid = 0;
  const redis = testClient(t, srv.url);
  const store = new CheckpointStore(redis, 'k1');
  await waitForConsole(serial, (c) => c.verifiedCount >= 1, 90_000);
  await waitFor('two versions', 90_000, async () => ((await store.committed()).length >= 2 ? true : undefined));
  qemuPid = await run.qemuPid();
  process.kill(qemuPid, 'SIGKILL');
  t.equal(await run.exited, 3, 'the sidecar reports the dead QEMU');

  const shown = await runCli(['inspect', '--vm', 'k1', '--redis', srv.url, '--record-key', keyFile], env);
  t.match(shown.stdout, /record: signed, verifies under --record-key/, 'inspect: the record verifies');

  // Someone with write access to the store makes recovery run a command of theirs.
  const key = vmKeys('k1').vm;
  const argv = (await redis.hget(key, 'argv'))!;
  const marker = join(dir, 'owned');
  await redis.hset(key, 'argv', JSON.stringify(['/bin/sh', '-c', `touch ${marker}`, ...JSON.parse(argv)]));
  const ramBefore = readdirSync(env.MIGSAFE_RUN_DIR!).filter((f) => f.endsWith('.ram'));
  const refused = await runCli(['recover', '--vm', 'k1', '--redis', srv.url, '--record-key', keyFile, '--detach', '--pidfile', pidfile], env);
  t.not(refused.code, 0, 'recovery refuses the changed record');
  t.match(refused.stderr, /VM "k1": its record in the store does not match its signature under --record-key: .*nothing was started/);
  t.notOk(existsSync(marker), 'the command in the changed record did not run');
  t.same(readdirSync(env.MIGSAFE_RUN_DIR!).filter((f) => f.endsWith('.ram')), ramBefore, 'no RAM file was written');
  const mismatch = await runCli(['inspect', '--vm', 'k1', '--redis', srv.url, '--record-key', keyFile, '--json'], env);
  t.equal((JSON.parse(mismatch.stdout) as { record: string }).record, 'mismatch', 'inspect --json says the signature does not match');

  // Put back as signed: it recovers, and the guest goes on intact.
  await redis.hset(key, 'argv', argv);
  const mark = readFileSync(serial, 'latin1').length;
  const rec = await runCli(['recover', '--vm', 'k1', '--redis', srv.url, '--record-key', keyFile, '--detach', '--pidfile', pidfile], env);
  t.equal(rec.code, 0, `the signed record recovers (${rec.stderr.trim().split('\n').pop()})`);
  qemuPid = run.own((JSON.parse(rec.stdout.trim().split('\n').pop()!) as { pid: number }).pid);
  t.ok(alive(qemuPid), 'the recovered QEMU runs');
  await waitForConsole(serial, (_c, text) => {
    const q = parseConsole(text.slice(mark));
    return q.verifiedCount >= 1 || q.errors.length > 0;
  }, 90_000);
  t.same(parseConsole(readFileSync(serial, 'latin1').slice(mark)).errors.map((e) => e.raw), [], 'and the guest finds its memory intact');
});
