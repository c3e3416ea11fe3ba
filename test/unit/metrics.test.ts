// The metrics registry and --metrics addresses, without a guest (test/e2e/metrics.test.ts has one).
import t from 'tap';
import { Metrics, parseListen, serveMetrics } from '../../src/util/metrics.js';

t.test('ADDR:PORT', async (t) => {
  t.same(parseListen('127.0.0.1:9464'), { host: '127.0.0.1', port: 9464 });
  t.same(parseListen('[::1]:0'), { host: '::1', port: 0 });
  t.same(parseListen('localhost:80'), { host: 'localhost', port: 80 });
  for (const bad of ['', '9464', ':9464', 'h:', 'h:-1', 'h:65536', 'h:1.5']) {
    t.throws(() => parseListen(bad), /--metrics must be ADDR:PORT/, JSON.stringify(bad));
  }
});

t.test('a round, a failure and a recovery land in their series', async (t) => {
  const m = new Metrics();
  m.round('a', { kind: 'fic', pauseMs: 20, replicationMs: 300, commitMs: 4, pages: 10, bytesRaw: 40960, bytesStored: 999, committedAt: Date.now() - 2000 });
  m.roundFailed('a', 'ric');
  m.recovered('a', { loadMs: 100, startMs: 50, totalMs: 150 });
  let held = 3;
  m.watchGate('a', () => held);
  m.watchLease('a', () => 7);
  const text = await m.registry.metrics();
  t.match(text, /^migsafe_checkpoint_pages_total\{vm="a",kind="fic"\} 10$/m);
  t.match(text, /^migsafe_checkpoint_pause_seconds_sum\{vm="a",kind="fic"\} 0\.02$/m);
  t.match(text, /^migsafe_checkpoint_pause_seconds_bucket\{le="0\.025",vm="a",kind="fic"\} 1$/m);
  t.match(text, /^migsafe_checkpoint_pause_seconds_bucket\{le="0\.01",vm="a",kind="fic"\} 0$/m);
  t.match(text, /^migsafe_checkpoint_rounds_failed_total\{vm="a",kind="ric"\} 1$/m);
  t.match(text, /^migsafe_recovery_duration_seconds\{vm="a",phase="load"\} 0\.1$/m);
  t.match(text, /^migsafe_gate_held_packets\{vm="a"\} 3$/m);
  t.match(text, /^migsafe_lease_token\{vm="a"\} 7$/m);
  const lag = Number(/^migsafe_checkpoint_lag_seconds\{vm="a"\} (\S+)$/m.exec(text)?.[1]);
  t.ok(lag >= 2 && lag < 30, `lag is read at scrape time: ${lag}`);
  held = 0;
  t.match(await m.registry.metrics(), /^migsafe_gate_held_packets\{vm="a"\} 0$/m, 'gauges read their source at each scrape');
});

t.test('the endpoint refuses an address in use, with the option named', async (t) => {
  const m = new Metrics();
  const a = await serveMetrics(m, '127.0.0.1:0');
  t.teardown(() => a.close());
  const port = a.url.match(/:(\d+)\/metrics$/)![1];
  await t.rejects(serveMetrics(m, `127.0.0.1:${port}`), /--metrics 127\.0\.0\.1:\d+: .*EADDRINUSE/);
});
