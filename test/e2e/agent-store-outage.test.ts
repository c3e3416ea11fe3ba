// The store goes silent (redis-server SIGSTOPped) past the agent's fencing margin: by the
// ownership rule the agent kills its QEMU. When the store answers again and nobody took the
// lease, the agent must bring the VM back itself from the store — else it stays down for good.
// A real redis-server, a real agent process, a real guest.
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { alive, cliEnv, killQuietly, startCli } from '../helpers/cli.js';
import { ensureGuestBuilt, guestQemuArgs, parseConsole, waitForConsole } from '../helpers/guest.js';
import { testRedis } from '../helpers/redis.js';
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

t.test('a store silent past the fencing margin: the VM is fenced, then recovered here once the store is back', async (t) => {
  const srv = await testRedis(t);
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-outage-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const statusFile = join(dir, 'status.json');
  const serial = join(dir, 'guest.serial');
  const agent = startCli(
    [
      'agent', '--host', 'h1', '--listen', `127.0.0.1:${await freePort()}`, '--redis', srv.url, '--no-gate',
      '--lease-ttl', '1500', '--interval', '500', '--status-file', statusFile, '--vm', 'o1',
      '--', ...guestQemuArgs({ workload: 'wset', workloadMiB: 2, serialLog: serial }),
    ],
    cliEnv(t),
  );
  t.teardown(() => {
    killQuietly(srv.pid, 'SIGCONT');
    killQuietly(agent.child.pid);
  });
  const status = () => {
    try {
      return (JSON.parse(readFileSync(statusFile, 'utf8')) as AgentStatus).vms.find((v) => v.vm === 'o1');
    } catch {
      return undefined;
    }
  };
  const before = await waitFor('FIC rounds', 90_000, () => {
    if (agent.child.exitCode !== null) throw new Error(`the agent exited: ${agent.err()}`);
    const s = status();
    return s && s.role === 'owner' && s.rounds.length >= 2 ? s : undefined;
  });
  await waitForConsole(serial, (c) => c.verifiedCount >= 1, 90_000);

  // The store stops answering (connections stay open): renewals time out.
  process.kill(srv.pid, 'SIGSTOP');
  await waitFor('the agent to fence its VM', 30_000, () => (status()?.role === 'fenced' ? true : undefined));
  await waitFor('the old QEMU to be gone', 10_000, () => (alive(before.pid) ? undefined : true));
  t.pass(`by the ownership rule, QEMU ${before.pid} was killed while the store was silent`);
  await sleep(1000);
  process.kill(srv.pid, 'SIGCONT');

  const mark = readFileSync(serial, 'latin1').length;
  const back = await waitFor('the VM to be recovered here', 90_000, () => {
    const s = status();
    return s && s.role === 'owner' && s.pid > 0 && s.pid !== before.pid && s.recoveries.length > 0 ? s : undefined;
  }).catch((e: Error) => {
    // Say what the agent saw: its status and the end of its log.
    throw new Error(`${e.message}; status ${JSON.stringify(status())}; agent log ends:\n${agent.err().slice(-4000)}`);
  });
  t.match(back.recoveries[back.recoveries.length - 1]!.why, /nobody took the VM over/, 'the agent recovered it, saying why');
  t.ok(alive(back.pid), `a new QEMU (${back.pid}) runs the VM`);
  await waitForConsole(serial, (_c, text) => {
    const q = parseConsole(text.slice(mark));
    return q.verifiedCount >= 1 || q.errors.length > 0 ? true : false;
  }, 120_000);
  const tail = parseConsole(readFileSync(serial, 'latin1').slice(mark));
  t.same(tail.errors.map((e) => e.raw), [], 'the recovered guest verifies its memory');
  await waitFor('FIC to go on', 30_000, () => ((status()?.head ?? 0) > before.head ? true : undefined));
  t.pass('and FIC goes on from the recovered version');
});
