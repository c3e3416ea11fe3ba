// The QMP client against a stand-in monitor on a real unix socket that misbehaves: no greeting,
// no answer, a late answer, a malformed line, a huge line, a reply to nothing. Each ends in its
// own error, and no reply is ever handed to the wrong command.
import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { MAX_LINE_BYTES, QmpClient, QmpProtocolError, QmpTimeoutError } from '../../src/qemu/qmp.js';
import { fakeQmp } from '../helpers/fake-qmp.js';

t.test('a monitor that never greets: connect fails, naming the socket', async (t) => {
  const q = await fakeQmp(t, () => ({ return: {} }), { greeting: null });
  await t.rejects(QmpClient.connect(q.path, 300), /QMP socket .*qmp\.sock: no QMP greeting within \d+ ms/);
});

t.test('a command that is never answered times out; a late reply does not answer the next command', async (t) => {
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  const q = await fakeQmp(t, async (cmd) => {
    if (cmd.execute === 'query-status') {
      await held;
      return { return: { status: 'late reply to query-status' } };
    }
    if (cmd.execute === 'query-name') return { return: { name: 'vm1' } };
    return { return: {} };
  });
  const c = await QmpClient.connect(q.path, 5_000, { commandTimeoutMs: 150 });
  t.teardown(() => c.close());
  const err = await c.execute('query-status').catch((e: Error) => e);
  t.ok(err instanceof QmpTimeoutError, 'QmpTimeoutError');
  t.match((err as Error).message, /QMP query-status: no reply from QEMU within 150 ms/);
  // QEMU answers in order: the next command's reply comes after the late one.
  const next = c.execute<{ name: string }>('query-name', undefined, { timeoutMs: 0 });
  release();
  t.same(await next, { name: 'vm1' }, 'the next command gets its own reply, not the late one');
  t.notOk(c.isClosed, 'the connection stays usable');
  t.same(await c.execute('query-name'), { name: 'vm1' });
});

t.test('an out-of-band command that times out: its late reply is dropped by id', async (t) => {
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  const q = await fakeQmp(t, async (cmd) => {
    if (cmd['exec-oob']) {
      await held;
      return { return: { late: true }, id: cmd.id };
    }
    return { return: { inband: cmd.execute } };
  });
  const c = await QmpClient.connect(q.path, 5_000, { oob: true, commandTimeoutMs: 150 });
  t.teardown(() => c.close());
  t.ok(c.oob, 'out of band enabled');
  await t.rejects(c.executeOob('migrate-pause'), QmpTimeoutError);
  release();
  await sleep(20);
  t.same(await c.execute('query-status'), { inband: 'query-status' });
  t.notOk(c.isClosed);
});

t.test('a malformed line fails every pending command and closes the connection', async (t) => {
  const q = await fakeQmp(t, (cmd) => (cmd.execute === 'query-status' ? '{"return": {"status": "runn\n' : { return: {} }));
  const c = await QmpClient.connect(q.path, 5_000);
  const first = c.execute('query-status').catch((e: Error) => e);
  const other = c.execute('query-name', undefined, { timeoutMs: 0 }); // queued behind it
  const err = await first;
  t.ok(err instanceof QmpProtocolError, 'QmpProtocolError');
  t.match((err as Error).message, /QMP query-status: QEMU sent a malformed QMP line \(.*\): \{"return": \{"status": "runn/);
  await t.rejects(other, /QMP query-name: QEMU sent a malformed QMP line/, 'the one behind it fails too, not answered by a wrong reply');
  t.ok(c.isClosed, 'closed');
  await t.rejects(c.execute('query-status'), /connection to QEMU is closed \(QEMU sent a malformed QMP line/);
});

t.test('lines that are no QMP message, and replies to no command, are protocol errors', async (t) => {
  for (const [raw, re] of [
    ['[1,2]\n', /not an object/],
    ['{"hello": 1}\n', /no reply, event or greeting/],
    ['{"return": {}}\n', /a reply to no command/],
    ['{"return": {}, "id": "nope"}\n', /a reply for an unknown id "nope"/],
    ['{"event": 5}\n', /an event without a name/],
  ] as const) {
    const q = await fakeQmp(t, () => ({ return: {} }));
    const c = await QmpClient.connect(q.path, 5_000);
    const closed = new Promise((r) => c.once('close', r));
    const waiting = c.waitEvent('STOP', 5_000);
    q.send(raw);
    await closed;
    t.ok(c.isClosed, `${raw.trim()}: closed`);
    await t.rejects(waiting, re, `${raw.trim()}: ${re}`);
  }
});

t.test('a line longer than the bound is refused, with or without its end', async (t) => {
  const q = await fakeQmp(t, (cmd) => {
    if (cmd.execute === 'query-status') return `{"return": {"status": "${'x'.repeat(MAX_LINE_BYTES + 10)}"}}\n`;
    return { return: {} };
  });
  const c = await QmpClient.connect(q.path, 5_000);
  const err = await c.execute('query-status', undefined, { timeoutMs: 0 }).catch((e: Error) => e);
  t.ok(err instanceof QmpProtocolError, 'QmpProtocolError');
  t.match((err as Error).message, new RegExp(`QEMU sent a QMP line (longer than ${MAX_LINE_BYTES}|of \\d+ characters, more than ${MAX_LINE_BYTES})`));
  t.ok(c.isClosed);
  // A small bound, and a line that never ends.
  const q2 = await fakeQmp(t, () => ({ return: {} }));
  const c2 = await QmpClient.connect(q2.path, 5_000, { maxLineBytes: 1024 });
  const p = c2.execute('query-status', undefined, { timeoutMs: 0 });
  q2.send('{"return": "' + 'y'.repeat(5000));
  await t.rejects(p, /QEMU sent a QMP line longer than 1024 characters without an end/);
});

t.test('events and replies in between still work', async (t) => {
  const q = await fakeQmp(t, (cmd) => (cmd.execute === 'stop' ? '{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}\n{"return": {}}\n' : { return: {} }));
  const c = await QmpClient.connect(q.path, 5_000);
  t.teardown(() => c.close());
  const ev = c.waitEvent('STOP', 5_000);
  t.same(await c.execute('stop'), {});
  t.equal((await ev).event, 'STOP');
  t.same(q.log, ['qmp_capabilities', 'stop']);
});
