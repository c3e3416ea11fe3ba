// One agent, several VMs (`agent --vms FILE`): each its own checkpoint loop, lease and store
// keys, and their stage-2 pauses take turns — never two guests paused at once by this host.
// Then the agent is SIGKILLed (its QEMUs die with it) and every VM is recovered from the store
// with its memory intact. Real guests, a real redis-server, a real agent process.
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { alive, cliEnv, killQuietly, runCli, startCli } from '../helpers/cli.js';
import { ensureGuestBuilt, guestQemuArgs, waitForConsole } from '../helpers/guest.js';
import { testClient, testRedis } from '../helpers/redis.js';
import { waitFor } from '../helpers/wait.js';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import type { AgentStatus } from '../helpers/hosts.js';
import { freePort } from '../../src/store/redis-server.js';

ensureGuestBuilt();
/** Guests at once: enough that pauses would collide, few enough for TCG on 2 cores in CI. */
const N = Number(process.env.MIGSAFE_MANY_VMS ?? 4);

t.test(`one agent checkpoints ${N} guests, pauses taking turns; each recovers`, async (t) => {
  const srv = await testRedis(t);
  const env = cliEnv(t);
  const redis = testClient(t, srv.url);
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-many-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const vms = Array.from({ length: N }, (_, i) => `m${i + 1}`);
  const serial = (vm: string) => join(dir, `${vm}.serial`);
  const list = vms.map((vm, i) => ({ vm, argv: guestQemuArgs({ workload: i % 2 ? 'idle' : 'wset', workloadMiB: 1, memMiB: 128, serialLog: serial(vm) }) }));
  writeFileSync(join(dir, 'vms.json'), JSON.stringify(list));
  const statusFile = join(dir, 'status.json');

  // Bad input first: each refused, naming the fix.
  const gate = await runCli(['agent', '--host', 'h1', '--listen', `127.0.0.1:${await freePort()}`, '--redis', srv.url, '--vms', join(dir, 'vms.json')], env);
  t.not(gate.code, 0, 'several VMs with the output gate are refused');
  t.match(gate.stderr, /the gate is host-wide for now .* add --no-gate/, 'naming the fix');
  writeFileSync(join(dir, 'bad.json'), JSON.stringify([{ vm: 'a', argv: ['q'] }, { vm: 'a', argv: ['q'] }]));
  const dup = await runCli(['agent', '--host', 'h1', '--listen', `127.0.0.1:${await freePort()}`, '--redis', srv.url, '--no-gate', '--vms', join(dir, 'bad.json')], env);
  t.match(dup.stderr, /entry 2: VM "a" is listed twice/, 'a VM listed twice is named');

  const agent = startCli(
    ['agent', '--host', 'h1', '--listen', `127.0.0.1:${await freePort()}`, '--redis', srv.url, '--no-gate', '--interval', '700', '--lease-ttl', '6000',
      '--status-file', statusFile, '--vms', join(dir, 'vms.json')],
    env,
  );
  t.teardown(() => killQuietly(agent.child.pid));
  const status = (): AgentStatus | undefined => {
    try {
      return JSON.parse(readFileSync(statusFile, 'utf8')) as AgentStatus;
    } catch {
      return undefined;
    }
  };
  let seen: AgentStatus | undefined;
  const st = await waitFor(`${N} VMs with 3 rounds each`, 240_000, () => {
    seen = status();
    if (agent.child.exitCode !== null) throw new Error(`the agent exited: ${agent.err().slice(-2000)}`);
    const s = seen;
    return s && s.vms.length === N && s.vms.every((v) => v.role === 'owner' && v.rounds.length >= 3) ? s : undefined;
  }).catch((e: Error) => {
    // Which VMs were behind, and where.
    const where = seen?.vms.map((v) => `${v.vm} ${v.role} ${v.rounds.length} rounds`).join('; ') ?? 'no status';
    throw new Error(`${e.message}: ${where}`);
  });
  t.same(st.vms.map((v) => v.vm).sort(), [...vms].sort(), 'every VM runs here');
  t.equal(new Set(st.vms.map((v) => v.pid)).size, N, 'each in its own QEMU');
  // Every pause, of every VM, as an interval: none may overlap another VM's.
  const pauses = st.vms.flatMap((v) => v.rounds.filter((r) => r.pausedAt).map((r) => ({ vm: v.vm, from: r.pausedAt!, to: r.pausedAt! + r.pauseMs })));
  pauses.sort((a, b) => a.from - b.from);
  const overlaps = pauses.filter((p, i) => i > 0 && p.from < pauses[i - 1]!.to - 1 && p.vm !== pauses[i - 1]!.vm);
  t.ok(pauses.length >= 3 * N, `${pauses.length} pauses recorded`);
  t.same(overlaps, [], 'no two VMs were paused at once');
  for (const vm of vms) await waitForConsole(serial(vm), (c) => c.verifiedCount >= 1, 120_000);

  // The agent dies; its QEMUs with it. Every VM comes back from the store.
  const pids = st.vms.map((v) => v.pid);
  killQuietly(agent.child.pid);
  await waitFor('the QEMUs to die with their agent', 15_000, () => (pids.some((p) => alive(p)) ? undefined : true));
  for (const vm of vms) {
    const store = new CheckpointStore(redis, vm);
    t.ok((await store.committed()).length >= 3, `${vm}: its versions are in the store`);
    const rec = await runCli(['recover', '--vm', vm, '--redis', srv.url, '--detach', '--lease-ttl', '6000'], env);
    t.equal(rec.code, 0, `${vm}: recover exits 0 (${rec.stderr.trim().split('\n').pop()})`);
    const pid = (JSON.parse(rec.stdout.trim().split('\n').pop()!) as { pid: number }).pid;
    t.teardown(() => killQuietly(pid));
  }
  for (const vm of vms) {
    const c = await waitForConsole(serial(vm), (c) => c.verifiedCount >= 1 || c.errors.length > 0, 120_000);
    t.same(c.errors.map((e) => e.raw), [], `${vm}: the recovered guest finds its memory intact`);
  }
});
