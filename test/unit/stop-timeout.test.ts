// A stage-2 `stop` that QEMU does not answer in time (a stand-in monitor on a unix socket, a
// real redis-server store): the round fails, the guest is resumed once QEMU answers — never
// left paused by a round that gave up — no blind `cont` is sent, and no round starts before.
import t, { type Test } from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { CheckpointEngine, StopTimeoutError } from '../../src/checkpoint/engine.js';
import { QmpClient } from '../../src/qemu/qmp.js';
import type { DirtySource } from '../../src/qemu/dirty/source.js';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import { parseCodec } from '../../src/store/frame.js';
import { loadVersion } from '../../src/store/reader.js';
import { fakeQmp, type QmpCommand } from '../helpers/fake-qmp.js';
import { testClient, testRedis } from '../helpers/redis.js';

const RAM = 16 * 4096;

const scan: DirtySource = { kind: 'scan', harvest: async (req) => req.compareAll(), close: async () => {} };

/** A QEMU stand-in with a run state; `stopGate` holds the reply to `stop` while set. */
async function setup(t: Test) {
  const st = { status: 'running', afterStop: 'paused', stopGate: undefined as Promise<void> | undefined };
  const q = await fakeQmp(t, async (cmd: QmpCommand) => {
    switch (cmd.execute) {
      case 'stop':
        await st.stopGate;
        st.status = st.afterStop;
        return { return: {} };
      case 'cont':
        st.status = 'running';
        return { return: {} };
      case 'query-status':
        return { return: { status: st.status, running: st.status === 'running' } };
      case 'xen-save-devices-state':
        writeFileSync(String(cmd.arguments!.filename), 'device state');
        return { return: {} };
      default:
        return { error: { class: 'CommandNotFound', desc: String(cmd.execute) } };
    }
  });
  const qmp = await QmpClient.connect(q.path, 5_000, { commandTimeoutMs: 150 });
  t.teardown(() => qmp.close());
  const srv = await testRedis(t);
  const store = new CheckpointStore(testClient(t, srv.url), 'vm-stop');
  await store.init(['q'], RAM);
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-stop-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const ram = randomBytes(RAM);
  const engine = (stopGraceMs: number) =>
    new CheckpointEngine({ store, qmp, ram, dirty: scan, codec: parseCodec('none'), deviceStatePath: join(dir, 'dev'), maxPages: 0, maxTimeMs: 0, stopGraceMs });
  return { st, q, store, ram, engine };
}

/** A gate held until its release is called. */
function gate() {
  let release!: () => void;
  const p = new Promise<void>((r) => (release = r));
  return { p, release };
}

t.test('stop answered late, within the grace: the round fails and the guest is resumed', async (t) => {
  const { st, q, store, engine } = await setup(t);
  const e = engine(30_000);
  const g = gate();
  st.stopGate = g.p;
  const round = e.round().catch((err: Error) => err);
  setTimeout(g.release, 400); // past the 150 ms command timeout
  const err = await round;
  t.ok(err instanceof StopTimeoutError, 'StopTimeoutError');
  t.match((err as Error).message, /QMP stop: no reply from QEMU within 150 ms .*; QEMU answered later and the guest was resumed: round abandoned/);
  t.equal(st.status, 'running', 'the guest runs');
  t.same(q.log, ['qmp_capabilities', 'stop', 'query-status', 'cont'], 'stop, then query-status, then cont');
  t.same(await store.committed(), [], 'no version from the abandoned round');
  // The next round is a normal one.
  st.stopGate = undefined;
  const m = await e.round();
  t.equal(m.version, 2);
  t.equal(st.status, 'running');
});

t.test('stop not answered past the grace: a clear failure; the resume follows when QEMU answers, before any new round', async (t) => {
  const { st, q, store, ram, engine } = await setup(t);
  const e = engine(200);
  const g = gate();
  st.stopGate = g.p;
  const err = await e.round().catch((x: Error) => x);
  t.ok(err instanceof StopTimeoutError, 'StopTimeoutError');
  t.match((err as Error).message, /QMP stop: no reply from QEMU within 350 ms: its monitor is stuck and the guest may be paused\. migsafe resumes it \(cont\) as soon as QEMU answers/);
  t.same(q.log, ['qmp_capabilities', 'stop', 'query-status'], 'query-status queued behind the stop; no blind cont');
  // A new round — even of a new engine on the same connection, as a checkpointer makes when it
  // reloads after a failed round — waits for the resume; it sends nothing until QEMU answers.
  const next = engine(200).round();
  await new Promise((r) => setImmediate(r));
  t.same(q.log, ['qmp_capabilities', 'stop', 'query-status'], 'no new stop while the old one is unanswered');
  g.release();
  const m = await next;
  t.equal(st.status, 'running', 'the guest runs');
  t.same(q.log.slice(0, 5), ['qmp_capabilities', 'stop', 'query-status', 'cont', 'stop'], 'cont before the next round’s stop');
  const img = await loadVersion(store, m.version);
  t.ok(img.image.equals(ram), 'the next round checkpoints as usual');
});

t.test('a VM that a migration stopped meanwhile is not resumed', async (t) => {
  const { st, q, engine } = await setup(t);
  const e = engine(30_000);
  const g = gate();
  st.stopGate = g.p;
  st.afterStop = 'postmigrate'; // the migration completed while stop was stuck
  const round = e.round().catch((err: Error) => err);
  setTimeout(g.release, 400);
  const err = await round;
  t.ok(err instanceof StopTimeoutError);
  t.match((err as Error).message, /QEMU answered later and the guest was left postmigrate \(not paused by this round\)/);
  t.same(q.log, ['qmp_capabilities', 'stop', 'query-status'], 'no cont');
  t.equal(st.status, 'postmigrate');
});
