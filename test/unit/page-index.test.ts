// The page index format (src/store/page-index.ts) and what lazy recovery works out from it
// (page-locator.ts): what goes in comes out, record for record; an index that is corrupt,
// foreign, truncated or describes another list is refused whole, with an error that says so;
// a frame whose records differ from its index is refused.
import t from 'tap';
import { pack, unpack } from 'msgpackr';
import { randomBytes } from 'node:crypto';
import { native } from '../../src/kernel/native.js';
import { batchPages } from '../../src/kernel/page-delta.js';
import { crc32c } from '../../src/kernel/index.js';
import { decidesAlone, decodePageIndex, PageIndexBuilder, type IndexBinding } from '../../src/store/page-index.js';
import { PageLocator } from '../../src/store/page-locator.js';

const PAGES = 512;
const n = native();

/** A frame's records: pages of `ram` that differ from `shadow` (updated), in the given order. */
function frame(ram: Buffer, shadow: Buffer, pages: number[]): Buffer {
  return n.encodeBatch(ram, shadow, Uint32Array.from(pages));
}

/** Three frames of one list: a run, scattered pages, and an out-of-order paused stage. */
function sampleList() {
  const ram = randomBytes(PAGES * 4096);
  for (const p of [3, 4, 40, 41, 42]) ram.fill(0, p * 4096, (p + 1) * 4096); // zero pages: a record of another kind
  const shadow = Buffer.alloc(ram.length);
  const frames = [frame(ram, shadow, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), frame(ram, shadow, [40, 41, 42, 43, 100, 300, 301, 511])];
  for (const p of [9, 301, 2, 7]) ram[p * 4096 + 17]! ^= 0xff; // re-dirtied: deltas, in no page order
  frames.push(frame(ram, shadow, [301, 9, 2, 7, 200]));
  return frames;
}

const bind = (over: Partial<IndexBinding> = {}): IndexBinding => ({ vm: 'vm-ix', version: 7, list: 'version', frames: 3, ...over });

function built(frames: Buffer[], b = bind()) {
  const builder = new PageIndexBuilder();
  for (const f of frames) builder.addFrame(batchPages(f));
  const buf = builder.encode({ vm: b.vm, version: b.version, list: b.list })!;
  const records = frames.reduce((a, f) => a + batchPages(f).pages.length, 0);
  return { buf, records };
}

t.test('encode then decode: every frame\'s pages and kinds, in record order', async (t) => {
  const frames = sampleList();
  const { buf, records } = built(frames);
  const ix = decodePageIndex(buf, { bind: bind(), bytes: buf.length, ramPages: PAGES, records }, 'test list');
  t.equal(ix.frames, 3);
  for (const [f, raw] of frames.entries()) {
    const r = batchPages(raw);
    t.same([...ix.pages.subarray(ix.start[f]!, ix.start[f + 1]!)], [...r.pages], `frame ${f}: its pages in order`);
    t.doesNotThrow(() => ix.checkFrame(f, r.pages, r.kinds), `frame ${f} matches its index`);
  }
  const last = batchPages(frames[2]!);
  t.same([...ix.pages.subarray(ix.start[2]!, ix.start[3]!)], [301, 9, 2, 7, 200], 'out of page order, as written');
  t.same([...ix.alone.subarray(ix.start[2]!, ix.start[2]! + 4)], [0, 0, 0, 0], 're-dirtied pages are deltas');
  t.equal(ix.alone[ix.start[2]! + 4], 1, 'a page first seen is whole');
  t.ok(buf.length < 120, `compact: ${buf.length} bytes for ${records} records`);
  t.throws(() => ix.checkFrame(2, last.pages.subarray(1), last.kinds.subarray(1)), /chunk 2: its records are not what the page index says \(4 records, the page index says 5\)/);
  const swapped = Uint32Array.from(last.pages);
  [swapped[0], swapped[1]] = [swapped[1]!, swapped[0]!];
  t.throws(() => ix.checkFrame(2, swapped, last.kinds), /record 0 is page 9 .* the page index says page 301/);
  const kinds = Uint8Array.from(batchPages(frames[0]!).kinds).fill(1);
  t.throws(() => ix.checkFrame(0, batchPages(frames[0]!).pages, kinds), /the page index says page 0 whole/, 'a record of another kind than indexed');

  const empty = new PageIndexBuilder();
  empty.addFrame(batchPages(Buffer.alloc(0)));
  const e = empty.encode({ vm: 'vm-ix', version: 1, list: 'base' })!;
  t.equal(decodePageIndex(e, { bind: { vm: 'vm-ix', version: 1, list: 'base', frames: 1 }, bytes: e.length, ramPages: PAGES }, 'x').pages.length, 0, 'an empty frame (an all-zero base)');
  const skipped = new PageIndexBuilder();
  skipped.addFrame(batchPages(frames[0]!));
  skipped.invalidate();
  t.equal(skipped.encode({ vm: 'vm-ix', version: 1, list: 'version' }), undefined, 'a list with an unindexed frame gets no index');
});

t.test('a corrupt, foreign, truncated or mismatched index is refused whole, saying why', async (t) => {
  const { buf, records } = built(sampleList());
  const want = { bind: bind(), bytes: buf.length, ramPages: PAGES, records };
  const refuse = (b: Uint8Array, re: RegExp, what: string, w = want) => t.throws(() => decodePageIndex(b, w, 'VM "vm-ix" version 7'), re, what);
  refuse(buf.subarray(0, buf.length - 3), /page index refused: \d+ bytes, the metadata says \d+ \(truncated or replaced\)/, 'truncated');
  refuse(buf.subarray(0, buf.length - 3), /page index refused: not a page index/, 'truncated, with metadata to match', { ...want, bytes: buf.length - 3 });
  const wire = unpack(buf) as Record<string, unknown> & { d: Uint8Array };
  const flipped = Buffer.from(wire.d);
  flipped[flipped.length - 1]! ^= 1;
  const corrupt = pack({ ...wire, d: flipped });
  refuse(corrupt, /page index refused: checksum mismatch/, 'a flipped bit', { ...want, bytes: corrupt.length });
  for (const [field, value, re] of [
    ['m', 'vm-other', /foreign: it belongs to VM "vm-other" version 7 version, not to VM "vm-ix" version 7 version/],
    ['v', 6, /foreign: it belongs to VM "vm-ix" version 6/],
    ['l', 'base', /foreign: it belongs to VM "vm-ix" version 7 base/],
    ['n', 2, /it describes 2 frames, the list has 3/],
    ['f', 2, /format 2, this migsafe reads format 1/],
    ['p', 10 ** 9, /records, more than the list can hold/],
  ] as const) {
    const b = pack({ ...wire, [field]: value });
    refuse(b, re, `${field} = ${value}`, { ...want, bytes: b.length });
  }
  refuse(buf, /\d+ records, the metadata says 99/, 'a record count other than the metadata\'s', { ...want, records: 99 });
  refuse(buf, /describes 3 frames, the list has 4/, 'a list that has more frames', { ...want, bind: bind({ frames: 4 }) });
  refuse(Buffer.from('not msgpack at all'), /page index refused/, 'garbage', { ...want, bytes: 18 });
  refuse(buf, /beyond the 64 pages of RAM/, 'pages beyond RAM', { ...want, ramPages: 64 });

  // A body whose checksum holds but which does not add up (as a buggy writer would make it).
  const forged = (body: number[], records: number, frames = 1) => {
    const d = Uint8Array.from(body);
    const x = crc32c(d, crc32c(Buffer.from(`migsafe-index|1|vm-ix|7|version|${frames}|${records}|`))) >>> 0;
    const b = pack({ f: 1, m: 'vm-ix', v: 7, l: 'version', n: frames, p: records, x, d });
    return [b, { bind: bind({ frames }), bytes: b.length, ramPages: PAGES }] as const;
  };
  t.doesNotThrow(() => decodePageIndex(...forged([2, 1, 0, 4], 2), 'x'), 'the forging is right: one frame, one run of pages 0..1');
  t.throws(() => decodePageIndex(...forged([2, 1, 0, 6], 2), 'x'), /frame 0: its runs hold more than its 2 records/);
  t.throws(() => decodePageIndex(...forged([2, 1, 0, 2], 2), 'x'), /frame 0: its runs hold 1 of its 2 records/);
  t.throws(() => decodePageIndex(...forged([2, 1, 0, 4, 9], 2), 'x'), /1 bytes after the last frame/);
  t.throws(() => decodePageIndex(...forged([2, 1, 0], 2), 'x'), /truncated body/);
  t.throws(() => decodePageIndex(...forged([2, 1, 1, 4], 2), 'x'), /a run of pages -1\.\.0/, 'a run before page 0');
  t.same([...decodePageIndex(...forged([1, 1, 0, 2, 1, 1, 0, 2], 2, 2), 'x').start], [0, 1, 2], 'two frames of one delta of page 0 each');
  t.throws(() => decodePageIndex(...forged([3, 1, 0, 6], 2), 'x'), /frame 0: 3 records, more than the index holds/);
});

t.test('the locator: a page\'s frames newest first down to its first whole record; zero where no list holds it', async (t) => {
  const ram = randomBytes(64 * 4096);
  const shadow = Buffer.alloc(ram.length);
  const lists: Buffer[][] = [[frame(ram, shadow, [0, 1, 2, 3]), frame(ram, shadow, [10, 11])]]; // base-like: whole pages
  ram[1 * 4096]! ^= 1;
  ram[10 * 4096]! ^= 1;
  lists.push([frame(ram, shadow, [1, 10])]); // deltas onto the base
  ram.fill(7, 2 * 4096, 3 * 4096);
  ram[1 * 4096 + 5]! ^= 1;
  lists.push([frame(ram, shadow, [2]), frame(ram, shadow, [1])]); // page 2 rewritten: a delta or whole, whichever the kernel found smaller
  const indexes = lists.map((frames, i) => {
    const b = new PageIndexBuilder();
    for (const f of frames) b.addFrame(batchPages(f));
    const buf = b.encode({ vm: 'v', version: i + 1, list: 'version' })!;
    return decodePageIndex(buf, { bind: { vm: 'v', version: i + 1, list: 'version', frames: frames.length }, bytes: buf.length, ramPages: 64 }, `list ${i}`);
  });
  const loc = new PageLocator(indexes, 64);
  t.same(loc.frames(1), [{ list: 2, frame: 1 }, { list: 1, frame: 0 }, { list: 0, frame: 0 }], 'page 1: two deltas, then its whole page');
  t.same(loc.frames(10), [{ list: 1, frame: 0 }, { list: 0, frame: 1 }], 'page 10: a delta onto the base');
  t.same(loc.frames(3), [{ list: 0, frame: 0 }], 'page 3: the base only');
  const two = loc.frames(2);
  t.same(two[0], { list: 2, frame: 0 }, 'page 2: its newest record first');
  const kind2 = batchPages(lists[2]![0]!).kinds[0]!;
  t.same(two, decidesAlone(kind2) ? [{ list: 2, frame: 0 }] : [{ list: 2, frame: 0 }, { list: 0, frame: 0 }], `page 2 (kind ${kind2}): down to a whole record`);
  t.same(loc.frames(30), [], 'page 30: in no list');
  t.notOk(loc.held(30));
  t.same(loc.zeroPages().length, 64 - 6, 'every page no list holds (all but 0..3, 10, 11) is zero');
});
