// `migsafe agent` as a service runs it: configured by a --config file, told to re-read it by
// SIGHUP, and stopped by SIGTERM. A real redis-server, a real agent process, a real guest.
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import { vmKeys } from '../../src/store/keys.js';
import { alive, cliEnv, killQuietly, startCli } from '../helpers/cli.js';
import { ensureGuestBuilt, guestQemuArgs } from '../helpers/guest.js';
import { testClient, testRedis } from '../helpers/redis.js';
import { waitFor } from '../helpers/wait.js';
import type { AgentStatus } from '../helpers/hosts.js';

ensureGuestBuilt();

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((res) => s.listen(0, '127.0.0.1', () => res()));
  const port = (s.address() as { port: number }).port;
  await new Promise((res) => s.close(res));
  return port;
}

t.test('SIGHUP applies a new interval from the config file; SIGTERM: final checkpoint, QEMU quit, lease released, exit 0', async (t) => {
  const srv = await testRedis(t);
  const redis = testClient(t, srv.url);
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-agent-service-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const cfg = join(dir, 'h1.toml');
  const statusFile = join(dir, 'status.json');
  const port = await freePort();
  const config = (interval: number, host: string, extra = '') =>
    `redis = "${srv.url}"\n\n[agent]\nhost = "${host}"\nlisten = "127.0.0.1:${port}"\nvm = "svc1"\n` +
    `interval = ${interval}\ngate = false\nstatus-file = "${statusFile}"\n${extra}`;
  // One round at start, then none for a minute: a round after SIGHUP is the new interval's.
  writeFileSync(cfg, config(60_000, 'h1'));
  const serial = join(dir, 'guest.serial');
  const agent = startCli(['agent', '--config', cfg, '--', ...guestQemuArgs({ workload: 'idle', memMiB: 128, serialLog: serial })], cliEnv(t));
  t.teardown(() => killQuietly(agent.child.pid));
  // The log as text, whether plain lines or JSON lines (quotes escaped in "msg").
  const log = () => agent.err().replace(/\\"/g, '"');
  const status = () => {
    try {
      return (JSON.parse(readFileSync(statusFile, 'utf8')) as AgentStatus).vms.find((v) => v.vm === 'svc1');
    } catch {
      return undefined;
    }
  };
  const first = await waitFor('the first FIC round', 90_000, () => {
    if (agent.child.exitCode !== null) throw new Error(`the agent exited: ${log()}`);
    const s = status();
    return s && s.role === 'owner' && s.rounds.length >= 1 ? s : undefined;
  });
  t.equal((await redis.get(vmKeys('svc1').owner))?.split('|')[0], 'h1', 'the agent holds the lease, under the host name from the file');
  await sleep(1500);
  t.equal(status()!.rounds.length, 1, 'with interval = 60000 from the file, no second round yet');

  // A typo in the new file: refused, nothing changes.
  writeFileSync(cfg, config(200, 'h1', 'intervl = 5\n'));
  agent.child.kill('SIGHUP');
  await waitFor('the refused reload', 10_000, () => (/SIGHUP: .*unknown key "intervl"/.test(log()) ? true : undefined));
  t.match(log(), /h1\.toml: unknown key "intervl" in \[agent\]: did you mean "interval"\?.*nothing changed/);
  t.equal(agent.child.exitCode, null, 'the agent runs on');

  writeFileSync(cfg, config(200, 'h2'));
  agent.child.kill('SIGHUP');
  const line = await waitFor('the reload', 10_000, () => /SIGHUP: re-read .*/.exec(log())?.[0]);
  t.match(line, /applied: interval 60000 → 200/, 'the interval is applied');
  t.match(line, /needs a restart .*host "h1" → "h2"/, 'the host name is not: it says so');
  const later = await waitFor('rounds at the new interval', 30_000, () => {
    const s = status();
    return s && s.rounds.length >= first.rounds.length + 3 ? s : undefined;
  });
  t.ok(later.rounds.length >= 4, `rounds go on at the new interval (${later.rounds.length})`);
  t.equal((await redis.get(vmKeys('svc1').owner))?.split('|')[0], 'h1', 'still the lease of h1: the host name was not changed live');

  const qemuPid = status()!.pid;
  t.ok(alive(qemuPid), 'QEMU runs');
  agent.child.kill('SIGTERM');
  const timer = setTimeout(() => killQuietly(agent.child.pid), 60_000);
  const code = await agent.exited;
  clearTimeout(timer);
  t.equal(code, 0, 'SIGTERM: exit 0');
  const final = /shutdown: final checkpoint version (\d+)/.exec(log());
  t.ok(final, 'a final checkpoint was taken');
  const store = new CheckpointStore(redis, 'svc1');
  t.equal(await store.head(), Number(final?.[1]), 'the final checkpoint is the head of the store');
  t.equal(await redis.exists(vmKeys('svc1').owner), 0, 'the lease key is gone from Redis');
  t.match(log(), /shutdown: QEMU \d+ quit; lease released/);
  await waitFor('QEMU to be gone', 10_000, () => (alive(qemuPid) ? undefined : true));
  t.notOk(alive(qemuPid), 'QEMU quit before the lease went');
});
