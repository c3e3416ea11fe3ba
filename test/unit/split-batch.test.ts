// splitBatch: where a batch of records is cut into frames (the engine's stage 2 and the store's
// addPages rely on it): at record boundaries, about `limit` bytes each, framing checked.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { batchRecords, encodeBatch, splitBatch } from '../../src/kernel/page-delta.js';

const PAGE = 4096;

/** A batch of `n` whole pages (random content against a zero shadow: every record ~4 KiB). */
function batch(n: number): Buffer {
  return encodeBatch(randomBytes(n * PAGE), Buffer.alloc(n * PAGE), null);
}

/** The rule, written out plainly: cut at the first boundary at or after at + limit. */
function reference(buf: Buffer, limit: number): number[] {
  const ends: number[] = [];
  let at = 0;
  while (at < buf.length) {
    let end = at;
    while (end < buf.length && end - at < limit) end += 16 + buf.readUInt32LE(end + 8);
    ends.push(end);
    at = end;
  }
  return ends;
}

t.test('pieces end where the rule says, join back to the batch, and hold whole records', async (t) => {
  const b = batch(40);
  const records = [...batchRecords(b)].length;
  for (const limit of [1, 100, PAGE, PAGE + 17, 3 * PAGE, 10 * PAGE, b.length - 1, b.length, 1 << 30]) {
    const parts = splitBatch(b, limit);
    let end = 0;
    t.same(parts.map((p) => (end += p.length)), reference(b, limit), `limit ${limit}: the same cuts`);
    t.same(Buffer.concat(parts), b, `limit ${limit}: nothing lost or reordered`);
    t.equal(parts.reduce((a, p) => a + [...batchRecords(p)].length, 0), records, `limit ${limit}: every piece is whole records`);
  }
  t.equal(splitBatch(b, 1).length, records, 'a limit below one record: one record per piece');
  t.equal(splitBatch(b, 1 << 30).length, 1, 'a limit above the batch: one piece');
});

t.test('empty and broken batches', async (t) => {
  t.same(splitBatch(Buffer.alloc(0), 1000), [], 'an empty batch has no pieces');
  const b = batch(3);
  t.throws(() => splitBatch(b.subarray(0, b.length - 5), PAGE), /payload truncated/, 'a truncated batch is refused');
  t.throws(() => splitBatch(b, 0), /limit must be > 0/);
});
