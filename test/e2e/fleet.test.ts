// `migsafe status` and `migsafe gc` against a real redis-server holding a real agent's VM: the
// fleet view names the lease holder and the agent's own role; gc leaves a VM whose lease is held
// alone, and once it is free removes exactly what no version references — a dead writer's
// pending version, an orphan version, the keys of a VM without a record — while every committed
// version still loads whole.
import t from 'tap';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cliEnv, killQuietly, runCli, startCli } from '../helpers/cli.js';
import { ensureGuestBuilt, guestQemuArgs } from '../helpers/guest.js';
import { testClient, testRedis } from '../helpers/redis.js';
import { waitFor } from '../helpers/wait.js';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import { vmKeys } from '../../src/store/keys.js';
import { loadVersion } from '../../src/store/reader.js';
import { parseCodec } from '../../src/store/frame.js';
import { freePort } from '../../src/store/redis-server.js';

ensureGuestBuilt();

t.test('status lists the VMs with their lease and role; gc removes only what nothing references', async (t) => {
  const srv = await testRedis(t);
  const env = cliEnv(t);
  const redis = testClient(t, srv.url);
  const store = new CheckpointStore(redis, 'f1');
  const listen = `127.0.0.1:${await freePort()}`;
  // A lease of 5 s: with 2 s, a loaded CI host (Redis fsyncing a first full version of 45 MB)
  // answered renewals late enough that the agent froze its QEMU round after round.
  const agent = startCli(
    ['agent', '--host', 'h1', '--listen', listen, '--redis', srv.url, '--no-gate', '--lease-ttl', '5000', '--interval', '500', '--vm', 'f1', '--', ...guestQemuArgs({ workload: 'wset', workloadMiB: 2, serialLog: join(tmpdir(), `migsafe-fleet-${process.pid}.serial`) })],
    env,
  );
  t.teardown(() => killQuietly(agent.child.pid));
  await waitFor('two committed versions', 90_000, async () => ((await store.committed()).length >= 2 ? true : undefined));

  // The keys a writer that died mid-round leaves: a pending version with a frame in it.
  const leftOver = async () => {
    const p = await store.begin(await store.head());
    await p.addPages(Buffer.alloc(0), parseCodec('none'));
    await waitFor('the frame to land', 5000, async () => ((await redis.exists(vmKeys('f1').chunks(p.version))) ? true : undefined));
    return p.version;
  };
  const k = vmKeys('f1');
  const held = await leftOver();
  await redis.rpush(k.chunks(99_999), Buffer.from('orphan'));
  // A VM whose record is gone (a delete cut short): keys no reader can use.
  await redis.rpush(vmKeys('ghost').chunks(3), Buffer.from('x'));

  const st = await runCli(['status', '--redis', srv.url, '--json'], env);
  t.equal(st.code, 0, `status exits 0 ${st.stderr}`);
  const fleet = JSON.parse(st.stdout) as { vms: { vm: string; role: string; owner: { host: string } | null; versions: number; head: number; ageMs: number; bytesStored: number; lastPauseMs: number; record: string; pending: number; agent: string }[] };
  const f1 = fleet.vms.find((v) => v.vm === 'f1')!;
  t.equal(f1.owner?.host, 'h1', 'f1: its lease is held by h1');
  t.equal(f1.role, 'owner', "f1: the agent's own role, asked at the address it published") || t.comment(agent.err().slice(-3000));
  t.equal(f1.agent, listen, 'f1: the agent address');
  t.ok(f1.versions >= 2 && f1.head > 0 && f1.bytesStored > 0 && f1.lastPauseMs > 0, `f1: versions ${f1.versions}, head ${f1.head}, ${f1.bytesStored} B, pause ${f1.lastPauseMs} ms`);
  t.ok(f1.ageMs >= 0 && f1.ageMs < 60_000, `f1: the newest version is ${f1.ageMs} ms old`);
  // Ours, plus the agent's own round if one is under way at that moment.
  t.ok(f1.pending >= 1 && f1.pending <= 2, `f1: the pending leftover is counted (${f1.pending} pending)`);
  const ghost = fleet.vms.find((v) => v.vm === 'ghost')!;
  t.equal(ghost.record, 'missing', 'ghost: keys without a record are shown as such');
  const text = await runCli(['status', '--redis', srv.url], env);
  t.match(text.stdout, /^VM\s+owner\s+role\s+versions/m, 'the table has its header');
  t.match(text.stdout, /^f1\s+h1 \([\d.]+ s left\)\s+owner\s+\d+/m, 'and a line for f1');

  // The lease is held: gc touches nothing of f1, even in earnest.
  const busy = await runCli(['gc', '--redis', srv.url, '--vm', 'f1'], env);
  t.match(busy.stdout, /f1: left alone, its lease is held by h1/, 'gc leaves a VM whose lease is held alone');
  t.equal(await redis.exists(k.chunks(held)), 1, "the writer's version under way is still there");
  t.equal(await redis.exists(k.chunks(99_999)), 1, 'and so is everything else of f1');

  // The agent dies (its QEMU with it); its lease runs out.
  killQuietly(agent.child.pid);
  await waitFor('the lease to run out', 15_000, async () => ((await redis.exists(k.owner)) === 0 ? true : undefined));
  const committed = await store.committed();
  const dry = await runCli(['gc', '--redis', srv.url, '--dry-run', '--json'], env);
  t.equal(dry.code, 0, `gc --dry-run exits 0 ${dry.stderr}`);
  const plan = JSON.parse(dry.stdout) as { removed: number; vms: { vm: string; keys: { key: string; why: string }[]; pending: number[] }[] };
  const p1 = plan.vms.find((v) => v.vm === 'f1')!;
  // Ours, and any the agent had under way when it was killed.
  const pendingNow = (await redis.smembers(k.pending)).map(Number).sort((a, b) => a - b);
  t.ok(pendingNow.includes(held), `version ${held} is pending (${pendingNow.join(', ')})`);
  const expected: string[] = [];
  for (const key of [...pendingNow.flatMap((n) => k.versionAll(n)), k.chunks(99_999)]) if (await redis.exists(key)) expected.push(key);
  t.same(p1.keys.map((x) => x.key).sort(), expected.sort(), `f1: the pending version(s) and the orphan version, nothing else (${expected.length} keys)`);
  t.ok(p1.keys.every((x) => !committed.some((v) => x.key.startsWith(`${k.prefix}v:${v}:`) || x.key === k.version(v))), 'no committed version is named');
  t.same([...p1.pending].sort((a, b) => a - b), pendingNow, 'the pending versions would be forgotten');
  t.same(plan.vms.find((v) => v.vm === 'ghost')!.keys.map((x) => x.key), [vmKeys('ghost').chunks(3)], "ghost: all its keys");
  t.equal(plan.removed, 0, 'a dry run removes nothing');
  t.equal(await redis.exists(k.chunks(held)), 1, 'the keys are still there after the dry run');

  const gc = await runCli(['gc', '--redis', srv.url], env);
  t.equal(gc.code, 0, `gc exits 0 ${gc.stderr}`);
  t.match(gc.stdout, /\d+ key\(s\) removed/, 'gc says how many keys it removed');
  t.equal(await redis.exists(k.chunks(held), k.chunks(99_999), vmKeys('ghost').chunks(3)), 0, 'the leftovers are gone');
  t.same(await redis.smembers(k.pending), [], 'nothing is pending any more');
  t.same(await store.committed(), committed, 'every committed version is still listed');
  const img = await loadVersion(store);
  t.equal(img.version, committed[committed.length - 1], `and the newest, version ${img.version}, loads whole (every frame checked)`);
  const again = await runCli(['gc', '--redis', srv.url, '--json'], env);
  t.equal((JSON.parse(again.stdout) as { removed: number }).removed, 0, 'a second gc finds nothing');
  const none = await runCli(['gc', '--redis', srv.url, '--vm', 'nope'], env);
  t.not(none.code, 0, 'gc of an unknown VM fails');
  t.match(none.stderr, /no VM "nope" in the store/, 'naming it');
});
