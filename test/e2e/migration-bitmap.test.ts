// Post-copy on the patched QEMU: RIC at the destination takes its dirty pages from QEMU's
// dirty bitmap (migsafe-ft, tracked from before the guest ran there), never from a compare of
// RAM (which would read the holes of pages still at the source), and also starts a round when
// the dirty-page count passes --ric-dirty-pages. The guest verifies its memory throughout, and
// the last RIC version, recovered on its own, runs a guest that verifies its memory too.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { waitFor } from '../helpers/wait.js';
import { ensureGuestBuilt, guestQemuArgs, parseConsole, waitForConsole } from '../helpers/guest.js';
import { appendSerial, createCluster, qemuPidsIn } from '../helpers/hosts.js';
import { patchedQemu } from '../helpers/patched-qemu.js';

ensureGuestBuilt();

t.test('post-copy on the patched QEMU: RIC rounds from the dirty bitmap, on the dirty-page threshold', async (t) => {
  const c = await createCluster({ t });
  const serial = join(c.dir, 'serial.log');
  // Long RIC interval, no packets: rounds come from the dirty-page threshold (wset dirties
  // thousands of pages a second) or, failing that, from the interval.
  c.startAgent('dst', ['--ric-interval', '4000', '--ric-dirty-pages', '512']);
  const argv = appendSerial(guestQemuArgs({ qemu: patchedQemu(), workload: 'wset', workloadMiB: 16, rate: 5000, memMiB: 128, serialLog: serial }));
  c.startAgent('src', ['--interval', '700', '--vm', 'b1', '--', ...argv]);
  await waitForConsole(serial, (p) => p.verifiedCount >= 2, 120_000);
  await waitFor('a committed FIC version', 60_000, () => ((c.status('src')?.vms[0]?.head ?? 0) > 0 ? true : undefined));
  const r = await c.cli('src', [
    'migrate', '--vm', 'b1', '--to', c.agents.dst!.addr, '--redis', c.redisUrl, '--mode', 'postcopy',
    '--bandwidth', '16', '--postcopy-bandwidth', '4',
  ]);
  t.equal(r.code, 0, `migrate exits 0: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
  const res = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { status: string; finalFicVersion: number };
  t.equal(res.status, 'completed');
  const mark = readFileSync(serial, 'latin1').length;
  await waitFor('the destination to own the VM', 60_000, () => (c.status('dst')?.vms[0]?.role === 'owner' ? true : undefined));
  t.same(qemuPidsIn(c.hosts.src), [], 'no QEMU left at the source');
  t.equal(qemuPidsIn(c.hosts.dst).length, 1, 'one QEMU at the destination');
  const after = await waitForConsole(serial, (_p, text) => parseConsole(text.slice(mark)).verifiedCount >= 2, 120_000);
  t.same(after.errors.map((e) => e.raw), [], 'the guest finds its memory intact after post-copy');

  const st = c.status('dst')!.vms[0]! as unknown as {
    ric: { dirtySource: string; dirtyPagesThreshold: number | null } | null;
    events: string[];
    rounds: { version: number; kind: string; trigger?: string; dirtySource?: string; fullCompare?: boolean; pages: number }[];
  };
  const ric = st.rounds.filter((x) => x.kind === 'ric');
  // The source ran FIC on the bitmap too: one full compare when tracking began, then only what it names.
  const srcFic = ((c.status('src')?.vms[0]?.rounds ?? []) as unknown as typeof st.rounds).filter((x) => x.kind === 'fic');
  t.ok(srcFic.length >= 2, `FIC rounds at the source: ${srcFic.length}`);
  t.same(srcFic.slice(1).filter((x) => x.dirtySource !== 'bitmap' || x.fullCompare).map((x) => x.version), [], 'FIC at the source: from the bitmap after its first round');
  t.ok(ric.length >= 2, `RIC rounds at the destination: ${ric.length}`);
  t.same(st.ric, { dirtySource: 'bitmap', dirtyPagesThreshold: 512 }, 'RIC runs on the bitmap source with the dirty-page threshold');
  t.ok(st.events.some((e) => /RIC on the bitmap dirty source/.test(e)), 'the log says RIC uses the bitmap');
  t.same([...new Set(ric.map((x) => x.dirtySource))], ['bitmap'], 'every RIC round took its pages from the bitmap');
  t.same(ric.filter((x) => x.fullCompare).map((x) => x.version), [], 'no RIC round compared all of RAM (the first one neither)');
  t.ok(ric.some((x) => x.trigger === 'dirty-pages'), `rounds started by the dirty-page threshold: ${ric.map((x) => x.trigger).join(',')}`);
  const fic = await waitFor('a FIC round at the destination after post-copy', 60_000, () => {
    const f = (c.status('dst')?.vms[0]?.rounds as typeof st.rounds | undefined)?.filter((x) => x.kind === 'fic') ?? [];
    return f.length ? f : undefined;
  });
  t.ok(fic.every((x) => x.dirtySource === 'bitmap' && !x.fullCompare), 'after post-copy, FIC at the destination goes on from the bitmap');

  // The last RIC version is a complete, consistent image: recover it alone and let the guest check.
  const lastRic = ric[ric.length - 1]!.version;
  c.agents.dst!.child.kill('SIGKILL');
  for (const pid of qemuPidsIn(c.hosts.dst)) process.kill(pid, 'SIGKILL');
  await waitFor('the destination QEMU to go', 10_000, () => (qemuPidsIn(c.hosts.dst).length === 0 ? true : undefined));
  const mark2 = readFileSync(serial, 'latin1').length;
  // Its RAM file goes where the cluster's teardown removes it.
  process.env.MIGSAFE_RUN_DIR = c.agents.dst!.runDir;
  const rec = await c.cli('dst', ['recover', '--vm', 'b1', '--version', String(lastRic), '--redis', c.redisUrl, '--detach']);
  delete process.env.MIGSAFE_RUN_DIR;
  t.equal(rec.code, 0, `recover version ${lastRic} exits 0: ${rec.stderr.trim().split('\n').slice(-2).join(' | ')}`);
  const back = await waitForConsole(serial, (_p, text) => {
    const q = parseConsole(text.slice(mark2));
    return q.verifiedCount >= 2 || q.errors.length > 0 ? true : false;
  }, 120_000);
  void back;
  const tail = parseConsole(readFileSync(serial, 'latin1').slice(mark2));
  t.same(tail.errors.map((e) => e.raw), [], `the guest recovered from RIC version ${lastRic} verifies its memory`);
  t.ok(tail.verifiedCount >= 2, 'and goes on');
});
