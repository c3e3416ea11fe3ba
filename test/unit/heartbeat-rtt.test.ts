// Heartbeat round trips over a real loopback connection: each side echoes the other's
// heartbeats ({"hbAck":n}) and times its own; an echo of a heartbeat never sent is ignored.
import t from 'tap';
import { once } from 'node:events';
import { listen, Peer } from '../../src/ha/peer.js';
import { freePort } from '../../src/store/redis-server.js';
import { Metrics } from '../../src/util/metrics.js';

t.test('both sides time their heartbeats; a forged echo is not an RTT', async (t) => {
  const addr = `127.0.0.1:${await freePort()}`;
  const accepted: Peer[] = [];
  const srv = await listen(addr, (p) => accepted.push(p), async () => null);
  const a = await Peer.connect(addr);
  t.teardown(() => {
    a.close();
    for (const p of accepted) p.close();
    srv.close();
  });
  while (!accepted.length) await new Promise((r) => setTimeout(r, 5));
  const b = accepted[0]!;
  const rtts: number[] = [];
  a.on('rtt', (ms: number) => rtts.push(ms));
  let bGot = 0;
  b.on('rtt', () => bGot++);
  // b never starts heartbeats: it only echoes a's.
  a.startHeartbeat({ intervalMs: 20, timeoutMs: 5000 });
  while (rtts.length < 3) await once(a, 'rtt');
  t.ok(rtts.every((ms) => ms >= 0 && ms < 5000), `round trips ${rtts.map((x) => x.toFixed(2)).join(', ')} ms`);
  t.equal(bGot, 0, 'the side that sends no heartbeats times none');
  // A forged echo (a number a never sent, a string) emits nothing.
  const before = rtts.length;
  a.stopHeartbeat();
  await new Promise((r) => setTimeout(r, 100));
  const settled = rtts.length;
  b.sock.write('{"hbAck":999999}\n{"hbAck":"1"}\n{"hbAck":1}\n');
  await new Promise((r) => setTimeout(r, 100));
  t.equal(rtts.length, settled, `no RTT from echoes of heartbeats not outstanding (${before} before)`);
});

t.test('the RTT and the gate hold time are histograms with vm (and peer) labels', async (t) => {
  const m = new Metrics();
  m.heartbeatRtt('m1', 'dst', 0.0004);
  m.heartbeatRtt('m1', 'dst', 0.002);
  m.gateHold('m1', 0.3);
  const text = await m.registry.metrics();
  t.match(text, /^migsafe_heartbeat_rtt_seconds_count\{vm="m1",peer="dst"\} 2$/m);
  t.match(text, /^migsafe_heartbeat_rtt_seconds_bucket\{le="0.0005",vm="m1",peer="dst"\} 1$/m);
  t.match(text, /^migsafe_gate_hold_seconds_sum\{vm="m1"\} 0.3$/m);
  t.match(text, /# TYPE migsafe_gate_hold_seconds histogram/);
});
