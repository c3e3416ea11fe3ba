// Property tests of the control protocol's parsers, on random and mutated messages (seeded, so a
// failure names the input and repeats): the message checks of protocol.ts either return a message
// that is valid by every rule (and checks again to itself) or throw the documented error, which
// names the message kind — never anything else; and the peer's line parser (peer.ts), fed random
// bytes and mutated lines over a real socket, hands its handler only well-formed requests, answers
// with valid JSON lines, keeps working after garbage and closes on an oversize line.
import t from 'tap';
import { createServer, connect, type Socket } from 'node:net';
import { checkLeaseNotice, checkMigrateRequest, checkPrepareReply, checkPrepareRequest } from '../../src/migration/protocol.js';
import { MAX_LINE, Peer, parseAddr } from '../../src/ha/peer.js';

/** xorshift32: the same inputs on every run. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

const STRINGS = ['', 'm1', 'src', 'dst', 'precopy', 'postcopy', 'hybrid', 'exec:sh', '../x', 'a'.repeat(65), 'h:1', '10.0.0.2:7400', '[::1]:7400', 'tcp:1.2.3.4:5', 'é', '\u0000', 'x y', '1e3', '-1', 'true'];
const NUMBERS = [0, 1, -1, 7401, 65535, 65536, 1.5, -0, 1e20, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER + 2, 2 ** 31, 86_400_001];
const KEYS = ['vm', 'to', 'mode', 'from', 'host', 'port', 'uri', 'tls', 'token', 'version', 'maxBandwidth', 'postcopyBandwidth', 'postcopyAfterMs', 'op', 'id', '__proto__', 'constructor'];

/** A random value of the kind JSON carries (the wire has nothing else). */
function value(r: () => number, depth = 0): unknown {
  const k = Math.floor(r() * (depth > 2 ? 5 : 7));
  const pick = <T>(a: readonly T[]) => a[Math.floor(r() * a.length)]!;
  switch (k) {
    case 0: return pick(STRINGS);
    case 1: return pick(NUMBERS);
    case 2: return r() < 0.5;
    case 3: return null;
    case 4: return String.fromCharCode(...Array.from({ length: Math.floor(r() * 12) }, () => Math.floor(r() * 0x250)));
    case 5: return Array.from({ length: Math.floor(r() * 3) }, () => value(r, depth + 1));
    default: return Object.fromEntries(Array.from({ length: Math.floor(r() * 4) }, () => [pick(KEYS), value(r, depth + 1)]));
  }
}

/** A valid message of each kind, then mutated: a field changed, dropped or added. */
const VALID: Record<string, Record<string, unknown>> = {
  migrate: { vm: 'm1', to: '10.0.0.2:7400', mode: 'postcopy', maxBandwidth: 1 << 24, postcopyAfterMs: 800 },
  prepare: { vm: 'm1', mode: 'precopy', from: 'src' },
  reply: { host: 'dst', port: 7401, tls: true },
  lease: { token: 3, version: 12 },
};
function mutated(r: () => number, m: Record<string, unknown>): unknown {
  if (r() < 0.1) return value(r);
  const out: Record<string, unknown> = JSON.parse(JSON.stringify(m)) as Record<string, unknown>;
  for (let n = 1 + Math.floor(r() * 3); n > 0; n--) {
    const keys = Object.keys(out);
    const k = r() < 0.7 && keys.length ? keys[Math.floor(r() * keys.length)]! : KEYS[Math.floor(r() * KEYS.length)]!;
    if (r() < 0.25) delete out[k];
    else out[k] = value(r);
  }
  // Through JSON, as a peer's message arrives.
  return JSON.parse(JSON.stringify(out)) as unknown;
}

const VM_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const HOST = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const MODES = ['precopy', 'postcopy', 'hybrid'];
const intIn = (v: unknown, min: number, max: number) => typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max;
const optIntIn = (v: unknown, min: number, max: number) => v === undefined || intIn(v, min, max);

interface Case {
  check: (m: unknown) => Record<string, unknown>;
  error: RegExp;
  valid: (v: Record<string, unknown>) => boolean;
}
const CASES: Record<string, Case> = {
  migrate: {
    check: (m) => checkMigrateRequest(m as Record<string, unknown>) as unknown as Record<string, unknown>,
    error: /^migrate request: /,
    valid: (v) => {
      let to = false;
      try {
        to = typeof v.to === 'string' && parseAddr(v.to).port > 0;
      } catch {
        to = false;
      }
      return VM_ID.test(String(v.vm)) && to && MODES.includes(String(v.mode)) && optIntIn(v.maxBandwidth, 1, Number.MAX_SAFE_INTEGER) &&
        optIntIn(v.postcopyBandwidth, 1, Number.MAX_SAFE_INTEGER) && optIntIn(v.postcopyAfterMs, 0, 86_400_000);
    },
  },
  prepare: {
    check: (m) => checkPrepareRequest(m as Record<string, unknown>) as unknown as Record<string, unknown>,
    error: /^prepare request( "from")?: /,
    valid: (v) => VM_ID.test(String(v.vm)) && MODES.includes(String(v.mode)) && HOST.test(String(v.from)),
  },
  reply: {
    check: (m) => checkPrepareReply(m, '10.0.0.2') as unknown as Record<string, unknown>,
    error: /^prepare reply from 10\.0\.0\.2( "host")?: /,
    valid: (v) => HOST.test(String(v.host)) && intIn(v.port, 1, 65535) && (v.tls === undefined || v.tls === true) && Object.keys(v).every((k) => ['host', 'port', 'tls'].includes(k)),
  },
  lease: {
    check: (m) => checkLeaseNotice(m),
    error: /^lease notice: /,
    valid: (v) => intIn(v.token, 1, Number.MAX_SAFE_INTEGER) && intIn(v.version, 0, Number.MAX_SAFE_INTEGER) && Object.keys(v).length === 2,
  },
};

t.test('message checks: random and mutated messages are refused with the documented error or come out valid', async (t) => {
  const N = 4000;
  for (const [kind, c] of Object.entries(CASES)) {
    const r = rng(0x5eed + kind.length * 7919);
    let accepted = 0;
    let refused = 0;
    const bad: string[] = [];
    for (let i = 0; i < N; i++) {
      const m = i % 2 ? mutated(r, VALID[kind]!) : value(r);
      try {
        const v = c.check(m);
        accepted++;
        if (!c.valid(v)) bad.push(`accepted garbage ${JSON.stringify(m)} -> ${JSON.stringify(v)}`);
        else if (JSON.stringify(c.check(JSON.parse(JSON.stringify(v)))) !== JSON.stringify(v)) bad.push(`not stable: ${JSON.stringify(m)}`);
      } catch (e) {
        refused++;
        if (!(e instanceof Error) || e.constructor !== Error || !c.error.test(e.message)) bad.push(`${JSON.stringify(m)} threw ${String((e as Error)?.constructor?.name)}: ${String((e as Error)?.message ?? e)}`);
      }
      if (bad.length > 5) break;
    }
    t.same(bad, [], `${kind}: ${accepted} accepted (all valid), ${refused} refused (all with "${c.error.source}")`);
    t.ok(accepted > 0 && refused > N / 4, `${kind}: both outcomes were exercised`);
  }
});

/** A Peer on one end of a real loopback connection, the raw socket on the other. */
async function pair(t: { teardown(fn: () => unknown): void }, handled: Record<string, unknown>[]): Promise<{ peer: Peer; raw: Socket; lines: () => string[] }> {
  let peer!: Peer;
  const srv = createServer((s) => (peer = new Peer(s, async (m) => (handled.push(m), { echo: m.op }))));
  await new Promise<void>((res) => srv.listen(0, '127.0.0.1', () => res()));
  t.teardown(() => srv.close());
  const raw = connect((srv.address() as { port: number }).port, '127.0.0.1');
  await new Promise((res) => raw.once('connect', res));
  for (let i = 0; i < 100 && !peer; i++) await new Promise((res) => setTimeout(res, 5));
  let got = '';
  raw.setEncoding('utf8').on('data', (d: string) => (got += d));
  raw.on('error', () => {});
  t.teardown(() => raw.destroy());
  return { peer, raw, lines: () => got.split('\n').filter(Boolean) };
}

t.test('the line parser: garbage in any shape reaches no handler and does not stop the channel', async (t) => {
  const handled: Record<string, unknown>[] = [];
  const { peer, raw, lines } = await pair(t, handled);
  const events: unknown[] = [];
  peer.on('event', (ev: unknown) => events.push(ev));
  const r = rng(0xfeed);
  let sent = 0;
  for (let i = 0; i < 3000; i++) {
    const k = r();
    let chunk: string | Buffer;
    if (k < 0.3) chunk = Buffer.from(Array.from({ length: Math.floor(r() * 64) }, () => Math.floor(r() * 256)));
    else if (k < 0.6) chunk = JSON.stringify(value(r)) + '\n';
    else {
      // A request mutated: only those still with a string op and a safe integer id are requests.
      const m = mutated(r, { id: 1000 + i, op: 'prepare', vm: 'm1' }) as Record<string, unknown>;
      chunk = JSON.stringify(m) + (r() < 0.9 ? '\n' : '');
      if (m && typeof m === 'object' && !Array.isArray(m) && typeof m.op === 'string' && Number.isSafeInteger(m.id) && !('hb' in m) && !('hbAck' in m) && typeof m.refused !== 'string' && typeof m.event !== 'string' && !('ok' in m)) sent++;
    }
    raw.write(chunk);
  }
  // Whatever came before, a newline and then a good request is answered.
  raw.write('\n' + JSON.stringify({ id: 424242, op: 'ping' }) + '\n');
  const answered = () => lines().some((l) => /"id":424242/.test(l));
  for (let i = 0; i < 400 && !answered(); i++) await new Promise((res) => setTimeout(res, 10));
  t.ok(answered(), 'a well-formed request after 3000 bad chunks is still answered');
  t.notOk(peer.closed, 'the channel is still open');
  t.ok(handled.every((m) => typeof m.op === 'string' && Number.isSafeInteger(m.id)), `the handler saw only requests with a string op and an integer id (${handled.length})`);
  t.ok(handled.length >= 1 && handled.length <= sent + 1, `at most the ${sent} well-formed mutated requests, plus the last, reached it: ${handled.length}`);
  t.ok(events.every((e) => typeof e === 'string'), `events have string names (${events.length})`);
  const bad = lines().filter((l) => {
    try {
      const v = JSON.parse(l) as unknown;
      return typeof v !== 'object' || v === null;
    } catch {
      return true;
    }
  });
  t.same(bad, [], `every line the peer wrote is a JSON object (${lines().length})`);
});

t.test('the line parser: a line longer than MAX_LINE closes the channel, no handler runs', async (t) => {
  const handled: Record<string, unknown>[] = [];
  const { peer, raw } = await pair(t, handled);
  const closed = new Promise((res) => peer.once('close', res));
  raw.write(`{"id":1,"op":"prepare","vm":"${'x'.repeat(MAX_LINE + 16)}`);
  await closed;
  t.ok(peer.closed, 'closed');
  t.same(handled, [], 'nothing was handled');
});
