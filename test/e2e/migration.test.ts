// Live migration between two hosts (network namespaces) with FIC at the source, the final
// consistent FIC checkpoint at switchover, RIC at a post-copy destination, output commit
// through the gate: real QEMU (TCG), real redis-server on the store host, real veths.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { waitFor } from '../helpers/wait.js';
import { ensureGuestBuilt, parseConsole, waitForConsole } from '../helpers/guest.js';
import { udpGuestArgs, createCluster, fetchIn, peerDatagrams, qemuPidsIn, type Cluster } from '../helpers/hosts.js';

ensureGuestBuilt();

for (const mode of ['precopy', 'postcopy', 'hybrid'] as const) {
  t.test(`${mode}: the VM moves to the destination and goes on; checkpoints and packets follow it`, async (t) => {
    const c = await createCluster({ t });
    const serial = join(c.dir, 'serial.log');
    // Post-copy: both agents serve metrics on their own host's loopback.
    const metrics = mode === 'postcopy' ? ['--metrics', '127.0.0.1:9464'] : [];
    c.startAgent('dst', metrics);
    // Pre-copy also migrates a VM whose older versions were compacted into a base image.
    const compact = mode === 'precopy' ? ['--compact-every', '3'] : [];
    c.startAgent('src', [...metrics, '--interval', '700', ...compact, '--vm', 'm1', '--', ...udpGuestArgs(c, serial)]);
    await waitForConsole(serial, (p) => p.verifiedCount >= 3, 120_000);
    await waitFor('a committed FIC version', 60_000, () => ((c.status('src')?.vms[0]?.head ?? 0) > 0 ? true : undefined));
    const r = await c.cli('src', [
      'migrate', '--vm', 'm1', '--to', c.agents.dst!.addr, '--redis', c.redisUrl, '--mode', mode,
      '--bandwidth', '16', ...(mode !== 'precopy' ? ['--postcopy-bandwidth', '8'] : []),
      // hybrid: pre-copy first, post-copy after 800 ms
      ...(mode === 'hybrid' ? ['--postcopy-after', '800'] : []),
    ]);
    t.equal(r.code, 0, `migrate exits 0: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    const res = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { status: string; finalFicVersion: number };
    t.equal(res.status, 'completed');
    t.ok(res.finalFicVersion > 0, `final FIC version ${res.finalFicVersion}`);
    if (mode === 'precopy') t.match(readFileSync(c.agents.src!.log, 'utf8'), /compacted \d+ old versions into the base/, 'the source compacted before migrating');
    const mark = readFileSync(serial, 'latin1').length;
    await waitFor('the destination to own the VM', 60_000, () => (c.status('dst')?.vms[0]?.role === 'owner' ? true : undefined));
    t.same(qemuPidsIn(c.hosts.src), [], 'no QEMU left at the source');
    t.equal(qemuPidsIn(c.hosts.dst).length, 1, 'one QEMU at the destination');
    const after = await waitForConsole(serial, (_p, text) => parseConsole(text.slice(mark)).verifiedCount >= 3, 120_000);
    t.same(after.errors.map((e) => e.raw), [], 'the guest finds its memory intact');
    const st = c.status('dst')!.vms[0]!;
    if (mode !== 'precopy') t.ok(st.rounds.some((x) => x.kind === 'ric'), `RIC rounds at the destination: ${st.rounds.length}`);
    if (mode !== 'precopy') {
      // Stock QEMU: no dirty count, so RIC lists the present pages and the threshold is off (and says so).
      const ric = (st as unknown as { ric?: { dirtySource: string; dirtyPagesThreshold: number | null; note?: string } }).ric;
      t.equal(ric?.dirtySource, 'present-pages', 'RIC on stock QEMU lists the present pages (SEEK_DATA)');
      t.equal(ric?.dirtyPagesThreshold, null, 'no dirty-page threshold without a dirty count');
      t.match(ric?.note ?? '', /threshold is off/, 'the status says why');
    }
    t.ok(st.head > res.finalFicVersion, `the destination checkpoints on (head ${st.head})`);
    const got = peerDatagrams(c.peerLog);
    t.ok(got.length > 10, `the peer got ${got.length} datagrams`);
    if (mode === 'postcopy') {
      const series = (text: string, name: string) => Number(new RegExp(`^${name.replace(/[{}]/g, '\\$&')} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
      const dst = fetchIn(c.hosts.dst, 'http://127.0.0.1:9464/metrics');
      const src = fetchIn(c.hosts.src, 'http://127.0.0.1:9464/metrics');
      t.ok(series(dst, 'migsafe_checkpoint_versions_committed_total{vm="m1",kind="ric"}') > 0, 'the destination agent counts its RIC versions');
      t.ok(series(dst, 'migsafe_checkpoint_versions_committed_total{vm="m1",kind="fic"}') > 0, 'and its FIC versions after the migration');
      t.ok(series(src, 'migsafe_checkpoint_versions_committed_total{vm="m1",kind="fic"}') > 0, 'the source agent counted FIC before it');
      t.equal(series(dst, 'migsafe_lease_token{vm="m1"}'), st.leaseToken, 'the lease token in the metrics is the one in the status');
      t.equal(series(src, 'migsafe_lease_token{vm="m1"}'), 0, 'the source holds no lease any more');
      t.ok(series(dst, 'migsafe_gate_held_packets{vm="m1"}') >= 0, 'the gate reports what it holds');
      // Heartbeats went both ways during the migration, each side timing its own (labelled by the other's host).
      for (const [text, peer] of [[src, 'dst'], [dst, 'src']] as const) {
        const n = series(text, `migsafe_heartbeat_rtt_seconds_count{vm="m1",peer="${peer}"}`);
        const sum = series(text, `migsafe_heartbeat_rtt_seconds_sum{vm="m1",peer="${peer}"}`);
        t.ok(n > 0, `${peer === 'dst' ? 'the source' : 'the destination'} timed ${n} heartbeat round trips to ${peer}`);
        // Below the failure detector's 1.5 s timeout: a round trip that long would have suspected the peer.
        t.ok(sum > 0 && sum / n < 1.5, `mean RTT to ${peer}: ${((sum / n) * 1000).toFixed(2)} ms`);
      }
      // The gate released packets after their round committed: each held a positive time, under a few rounds' worth.
      for (const [text, who] of [[src, 'source'], [dst, 'destination']] as const) {
        const n = series(text, 'migsafe_gate_hold_seconds_count{vm="m1"}');
        const sum = series(text, 'migsafe_gate_hold_seconds_sum{vm="m1"}');
        t.ok(n > 0, `the ${who}'s gate released ${n} held packets`);
        t.ok(sum > 0 && sum / n < 30, `mean hold at the ${who}: ${((sum / n) * 1000).toFixed(0)} ms`);
      }
    }
  });
}
