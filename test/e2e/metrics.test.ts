// `--metrics`: a real guest checkpointed by `migsafe run` serves Prometheus text whose figures
// move between two scrapes; after a SIGKILL, `migsafe recover` reports the recovery's phases.
import t from 'tap';

import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitFor } from '../helpers/wait.js';
import { ensureGuestBuilt, guestQemuArgs, waitForConsole } from '../helpers/guest.js';
import { testRedis } from '../helpers/redis.js';
import { cliEnv, killQuietly, runCli, startCli, startOwnedCli } from '../helpers/cli.js';

ensureGuestBuilt();

/** The value of one series, e.g. `migsafe_checkpoint_versions_committed_total{vm="m1",kind="fic"}`. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

async function scrape(url: string): Promise<string> {
  const res = await fetch(url);
  if (res.status !== 200) throw new Error(`${url}: HTTP ${res.status}`);
  return res.text();
}

const urlIn = (err: string) => /metrics at (http:\/\/\S+\/metrics)/.exec(err)?.[1];

t.test('run and recover serve metrics that move with the guest', async (t) => {
  const srv = await testRedis(t);
  const env = cliEnv(t);
  const vm = 'm1';
  const serial = join(tmpdir(), `migsafe-metrics-${process.pid}.serial`);
  const pidfile = join(tmpdir(), `migsafe-metrics-${process.pid}.pid`);
  const argv = guestQemuArgs({ workload: 'wset', serialLog: serial, workloadMiB: 4 });
  const run = startOwnedCli(t, ['run', '--vm', vm, '--redis', srv.url, '--interval', '500', '--pidfile', pidfile, '--metrics', '127.0.0.1:0', '--', ...argv], env, pidfile);
  let qemuPid = 0;
  const url = await waitFor('the metrics address in the log', 30_000, () => urlIn(run.err()));
  t.match(url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/, 'the endpoint says where it is (port 0: a free one)');
  qemuPid = await run.qemuPid();
  await waitForConsole(serial, (c) => c.verifiedCount >= 1, 90_000);

  const l = `{vm="${vm}",kind="fic"}`;
  const first = await waitFor('two committed versions in the metrics', 90_000, async () => {
    const text = await scrape(url);
    return (sample(text, `migsafe_checkpoint_versions_committed_total${l}`) ?? 0) >= 2 ? text : undefined;
  });
  const committed1 = sample(first, `migsafe_checkpoint_versions_committed_total${l}`)!;
  const pages1 = sample(first, `migsafe_checkpoint_pages_total${l}`)!;
  t.ok(pages1 > 0, `pages sent: ${pages1}`);
  t.ok(sample(first, `migsafe_checkpoint_stored_bytes_total${l}`)! > 0, 'stored bytes counted');
  t.equal(sample(first, `migsafe_checkpoint_raw_bytes_total${l}`), pages1 * 4096, 'raw bytes are 4096 per page');
  t.equal(sample(first, `migsafe_checkpoint_pause_seconds_count${l}`), committed1, 'one pause observed per committed version');
  t.ok(sample(first, `migsafe_checkpoint_pause_seconds_sum${l}`)! > 0, 'pauses take time');
  t.equal(sample(first, `migsafe_checkpoint_commit_seconds_count${l}`), committed1, 'one commit latency per version');
  const lag = sample(first, `migsafe_checkpoint_lag_seconds{vm="${vm}"}`);
  t.ok(lag !== undefined && lag >= 0 && lag < 60, `lag of the newest version: ${lag} s`);
  t.ok(sample(first, 'process_resident_memory_bytes')! > 0, "the process's own metrics are there");
  t.match(first, /# TYPE migsafe_checkpoint_round_duration_seconds histogram/);
  // `run` has no output gate and no peer: the agent's series are declared and stay empty here
  // (test/e2e/migration.test.ts's post-copy case sees them move).
  t.match(first, /# TYPE migsafe_heartbeat_rtt_seconds histogram/);
  t.match(first, /# TYPE migsafe_gate_hold_seconds histogram/);
  t.notMatch(first, /^migsafe_gate_hold_seconds_count/m, 'no hold time without a gate');

  const second = await waitFor('more versions', 60_000, async () => {
    const text = await scrape(url);
    return sample(text, `migsafe_checkpoint_versions_committed_total${l}`)! > committed1 ? text : undefined;
  });
  t.ok(sample(second, `migsafe_checkpoint_pages_total${l}`)! > pages1, 'the page counter moves (the guest keeps writing)');
  const nf = await fetch(url.replace(/\/metrics$/, '/other'));
  t.equal(nf.status, 404, 'only /metrics is served');

  // The failure, then a recovery that reports its phases before it checkpoints on.
  process.kill(qemuPid, 'SIGKILL');
  t.equal(await run.exited, 3, 'run reports the dead QEMU');
  const rec = startCli(['recover', '--vm', vm, '--redis', srv.url, '--interval', '500', '--pidfile', pidfile, '--metrics', '127.0.0.1:0'], env);
  t.teardown(() => killQuietly(rec.child.pid));
  const recUrl = await waitFor('the recovery to report', 90_000, async () => {
    const u = urlIn(rec.err());
    if (!u || !/recovered version/.test(rec.err())) return undefined;
    return u;
  });
  qemuPid = await run.qemuPid();
  const r = await scrape(recUrl);
  t.equal(sample(r, `migsafe_recoveries_total{vm="${vm}"}`), 1, 'one recovery');
  const load = sample(r, `migsafe_recovery_duration_seconds{vm="${vm}",phase="load"}`)!;
  const start = sample(r, `migsafe_recovery_duration_seconds{vm="${vm}",phase="start"}`)!;
  const write = sample(r, `migsafe_recovery_duration_seconds{vm="${vm}",phase="write"}`)!;
  const total = sample(r, `migsafe_recovery_duration_seconds{vm="${vm}",phase="total"}`)!;
  t.ok(load > 0 && write > 0 && start > 0, `phases: load ${load} s, write ${write} s, start ${start} s`);
  t.ok(Math.abs(load + write + start - total) < 1e-3, 'the phases add up to the total');
  rec.child.kill('SIGTERM');
  t.equal(await rec.exited, 0, 'recover stops cleanly on SIGTERM');
  killQuietly(qemuPid);
});

t.test('a bad --metrics address is refused before anything starts', async (t) => {
  const env = cliEnv(t);
  for (const bad of ['9464', 'localhost:', ':9464', '127.0.0.1:99999', '127.0.0.1:x']) {
    const r = await runCli(['run', '--vm', 'm2', '--metrics', bad, '--', 'qemu-system-x86_64'], env);
    t.equal(r.code, 2, `${bad}: usage error`);
    t.match(r.stderr, /--metrics must be ADDR:PORT, e\.g\. 127\.0\.0\.1:9464/, `${bad}: says what is expected`);
  }
});
