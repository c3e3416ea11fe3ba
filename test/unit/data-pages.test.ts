// dataPages: the pages of a sparse file that hold data, holes never listed (SEEK_DATA).
import t from 'tap';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dataPages } from '../../src/kernel/data-pages.js';

// tmpfs, like the destination's guest RAM (shmem), when there is one.
const dir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'migsafe-data-pages-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

function sparse(name: string, pages: number, writes: number[]): string {
  const path = join(dir, name);
  const fd = openSync(path, 'w');
  ftruncateSync(fd, pages * 4096);
  for (const off of writes) writeSync(fd, Buffer.from([1, 2, 3]), 0, 3, off);
  closeSync(fd);
  return path;
}

t.test('lists the data pages of a sparse file, not its holes', async (t) => {
  // Page 10 holds data only in its middle; page 63 is the last.
  const path = sparse('ram', 64, [3 * 4096, 10 * 4096 + 100, 63 * 4096 + 4000]);
  t.same([...(await dataPages(path))], [3, 10, 63], 'by path');
  const fd = openSync(path, 'r');
  try {
    t.same([...(await dataPages(fd))], [3, 10, 63], 'by fd');
  } finally {
    closeSync(fd);
  }
  t.same([...(await dataPages(path, 8192))], [1, 5, 31], '8 KiB pages');
  const r = await dataPages(path);
  t.ok(r instanceof Uint32Array, 'a Uint32Array');
});

t.test('a file without data lists nothing', async (t) => {
  t.same([...(await dataPages(sparse('holes', 16, [])))], [], 'holes only');
  t.same([...(await dataPages(sparse('empty', 0, [])))], [], 'zero length');
});

t.test('a bad file or page size gives a clear error', async (t) => {
  await t.rejects(dataPages(join(dir, 'missing')), /dataPages: open .*missing: No such file/, 'missing path');
  await t.rejects(dataPages(1 << 20), /dataPages: fd 1048576: lseek SEEK_END: Bad file descriptor/, 'closed fd');
  t.throws(() => dataPages(-1), /fd must be an integer >= 0/);
  t.throws(() => dataPages(''), /file must be an fd or a non-empty path/);
  t.throws(() => dataPages(join(dir, 'x'), 3000), /pageSize must be a power of two/);
});
