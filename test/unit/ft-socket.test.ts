// The ft socket's transport and mapFd: bad arguments are refused before they reach C++. The
// protocol itself, with a real patched QEMU at the other end, is test/e2e/bitmap.test.ts.
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync, openSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { closeFd, eventfdSignal, eventfdWaitAsync, ftConnect, ftRecv, ftSend } from '../../src/kernel/ft-socket.js';
import { mapFd } from '../../src/kernel/map-file.js';

t.test('bad fds and lengths are refused with what was wrong', async (t) => {
  t.throws(() => ftSend(-1, 'x'), /ftSend socket: not a file descriptor \(-1\)/);
  t.throws(() => ftSend(3, 'x', 1.5), /ftSend fd to pass: not a file descriptor/);
  t.throws(() => ftRecv(Number.NaN, 10), /ftRecv socket/);
  t.throws(() => eventfdSignal(-2), /eventfdSignal/);
  t.throws(() => closeFd(-1), /closeFd/);
  await t.rejects(async () => eventfdWaitAsync(-1, 10), /eventfdWaitAsync/);
  t.throws(() => mapFd(-1, 4096), /mapFd: not a file descriptor/);
  t.throws(() => mapFd(0, 0), /mapFd: length must be a whole number > 0/);
});

t.test('connecting to a path nobody listens on throws', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ftsock-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  t.throws(() => ftConnect(join(dir, 'absent.sock')));
});

t.test('mapFd maps the bytes of a file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ftsock-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'bitmap');
  const content = Buffer.alloc(8192, 0);
  content.write('migsafe-bitmap', 4096);
  writeFileSync(path, content);
  const fd = openSync(path, 'r');
  const m = mapFd(fd, 8192);
  closeSync(fd); // the mapping outlives the fd
  t.equal(m.length, 8192);
  t.equal(m.subarray(4096, 4110).toString(), 'migsafe-bitmap');
});
