// The store goes silent (redis-server SIGSTOPped) past the agent's fencing margin: by the
// ownership rule the agent stops its QEMU — frozen in place (SIGSTOP), since only the store is
// silent. When the store answers again and nobody took the lease, the same QEMU goes on, nothing
// lost. If the frozen QEMU died meanwhile, the agent brings the VM back from the store itself —
// else it would stay down for good. A real redis-server, a real agent process, a real guest.
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { alive, cliEnv, killQuietly, startCli } from '../helpers/cli.js';
import { ensureGuestBuilt, guestQemuArgs, parseConsole, waitForConsole } from '../helpers/guest.js';
import { testRedis } from '../helpers/redis.js';
import { waitFor } from '../helpers/wait.js';
import type { AgentStatus } from '../helpers/hosts.js';
import { freePort } from '../../src/store/redis-server.js';

ensureGuestBuilt();

/** The process's state letter in /proc (T: stopped by a signal). */
function procState(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '')[0];
  } catch {
    return undefined;
  }
}

t.test('a store silent past the fencing margin: the VM is frozen and goes on once the store is back; if its QEMU died meanwhile, it is recovered here', async (t) => {
  const srv = await testRedis(t);
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-outage-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const statusFile = join(dir, 'status.json');
  const serial = join(dir, 'guest.serial');
  // A lease of 3 s: with 1.5 s (a 1 s margin, renewals timing out at 0.5 s) a loaded CI host
  // re-fenced the VM right after each thaw, 45 times over, while it reloaded its shadow.
  const agent = startCli(
    [
      'agent', '--host', 'h1', '--listen', `127.0.0.1:${await freePort()}`, '--redis', srv.url, '--no-gate',
      '--lease-ttl', '3000', '--interval', '500', '--status-file', statusFile, '--vm', 'o1',
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
  // A timeout says what the agent saw: its status (without the full story) and the end of its log.
  const seen = (e: Error): never => {
    const s = status();
    throw new Error(`${e.message}; status ${JSON.stringify(s && { ...s, events: s.events.slice(-12), rounds: s.rounds.length })}; agent log ends:\n${agent.err().slice(-4000)}`);
  };
  const owning = (minRounds: number) => () => {
    if (agent.child.exitCode !== null) throw new Error(`the agent exited: ${agent.err()}`);
    const s = status();
    return s && s.role === 'owner' && !s.frozen && s.head > 0 && s.rounds.length >= minRounds ? s : undefined;
  };
  const before = await waitFor('FIC rounds', 90_000, owning(2)).catch(seen);
  await waitForConsole(serial, (c) => c.verifiedCount >= 1, 90_000);

  // 1. The store stops answering (connections stay open): renewals time out.
  process.kill(srv.pid, 'SIGSTOP');
  await waitFor('the agent to fence its VM', 30_000, () => (status()?.role === 'fenced' ? status() : undefined)).catch(seen);
  t.ok(status()?.frozen, 'fenced with its QEMU frozen, not killed');
  t.match(agent.err(), /cannot reach the store to renew the lease: no renewal acknowledged for \d+ ms \(lease 3000 ms, fenced at 2000 ms\): (a renewal has waited \d+ ms for the store|the last renewal took \d+ ms), .*likely the store answered slowly or not at all/, 'the agent says why, with the figures');
  await waitFor('the QEMU to be stopped', 10_000, () => (procState(before.pid) === 'T' ? true : undefined)).catch(seen);
  t.pass(`QEMU ${before.pid} runs no guest code while the store is silent`);
  await sleep(1000);
  const thawsBefore = status()?.thaws.length ?? 0;
  process.kill(srv.pid, 'SIGCONT');
  let mark = readFileSync(serial, 'latin1').length;
  const on = await waitFor('the frozen VM to go on', 60_000, () => {
    const s = owning(0)();
    return s && s.thaws.length > thawsBefore && s.ckpt === 'fic' && s.head > before.head ? s : undefined;
  }).catch(seen);
  t.equal(on.pid, before.pid, 'the same QEMU goes on');
  t.not(procState(on.pid), 'T', 'and runs');
  t.equal(on.recoveries.length, 0, 'no recovery was needed');
  const thaw = on.thaws[on.thaws.length - 1]!;
  t.comment(`thawed in ${thaw.ms.toFixed(0)} ms, FIC from version ${thaw.fromVersion} (${thaw.shadow === 'kept' ? 'the shadow the frozen loop kept' : 'read back from the store'})`);
  t.ok(thaw.shadow === 'kept' || thaw.shadow === 'store', 'FIC went on from a committed version, not a first full checkpoint');
  await waitForConsole(serial, (_c, text) => {
    const q = parseConsole(text.slice(mark));
    return q.verifiedCount >= 1 || q.errors.length > 0;
  }, 90_000);
  t.same(parseConsole(readFileSync(serial, 'latin1').slice(mark)).errors.map((e) => e.raw), [], 'the guest goes on verifying its memory');

  // 2. Silent again, and this time the frozen QEMU dies: only the store can bring the VM back.
  await waitFor('a round after the thaw', 60_000, owning(on.rounds.length + 1)).catch(seen);
  process.kill(srv.pid, 'SIGSTOP');
  await waitFor('the agent to freeze its VM again', 30_000, () => (status()?.frozen ? true : undefined)).catch(seen);
  process.kill(on.pid, 'SIGKILL');
  await waitFor('the old QEMU to be gone', 10_000, () => (alive(on.pid) ? undefined : true));
  await sleep(500);
  process.kill(srv.pid, 'SIGCONT');
  mark = readFileSync(serial, 'latin1').length;
  const back = await waitFor('the VM to be recovered here', 90_000, () => {
    const s = status();
    return s && s.role === 'owner' && s.pid > 0 && s.pid !== on.pid && s.recoveries.length > 0 ? s : undefined;
  }).catch(seen);
  t.match(back.recoveries[back.recoveries.length - 1]!.why, /nobody took the VM over/, 'the agent recovered it, saying why');
  t.ok(alive(back.pid), `a new QEMU (${back.pid}) runs the VM`);
  await waitForConsole(serial, (_c, text) => {
    const q = parseConsole(text.slice(mark));
    return q.verifiedCount >= 1 || q.errors.length > 0;
  }, 120_000);
  t.same(parseConsole(readFileSync(serial, 'latin1').slice(mark)).errors.map((e) => e.raw), [], 'the recovered guest verifies its memory');
  await waitFor('FIC to go on', 30_000, () => ((status()?.head ?? 0) > back.recoveries[back.recoveries.length - 1]!.fromVersion ? true : undefined)).catch(seen);
  t.pass('and FIC goes on from the recovered version');
});
