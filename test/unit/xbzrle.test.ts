// XBZRLE kernel: QEMU's format byte for byte, every SIMD level and the TS reference agree,
// round trips on the real corpus and random pages, QEMU's overflow rule at its edges, and a
// decoder that refuses malformed input.
import t from 'tap';
import { native, type CpuLevel } from '../../src/kernel/native.js';
import { cpuLevels, decodePage, encodePage } from '../../src/kernel/page-delta.js';
import { decodePageTs, encodePageTs, XbzrleError } from '../../src/kernel/xbzrle-ts.js';
import { CORPUS_FILES, corpusDir, loadPairs, pair, rng } from './corpus.js';

const levels: CpuLevel[] = cpuLevels();

function hex(b: Uint8Array | null): string {
  return b === null ? 'null' : Buffer.from(b).toString('hex');
}

/** Every encoder's output for one pair; all must be identical. */
function allEncodings(o: Uint8Array, n: Uint8Array): Map<string, string> {
  const m = new Map<string, string>();
  for (const l of levels) m.set(l, hex(encodePage(o, n, l)));
  m.set('wordwise', hex(native().encodePageWordwise(o, n)));
  m.set('ts', hex(encodePageTs(o, n)));
  return m;
}

function thesisPages(): [Buffer, Buffer] {
  const o = Buffer.alloc(4096);
  const n = Buffer.alloc(4096);
  for (let i = 0; i < 15; i++) {
    o[75 + i] = 0x11 + i;
    n[75 + i] = 0x10 + i;
  }
  Buffer.from([0x20, 0, 0, 0x11, 0x23, 0x25]).copy(o, 90);
  Buffer.from([0x20, 0, 0, 0x11, 0x22, 0x24]).copy(n, 90);
  return [o, n];
}

t.test('CPU levels', async (t) => {
  t.ok(levels.includes('scalar'), 'scalar is always available');
  t.equal(levels[0], native().cpuLevel(), 'cpuLevel is the best level');
  t.throws(() => encodePage(Buffer.alloc(4096), Buffer.alloc(4096), 'sse9' as CpuLevel), /unknown level/);
});

t.test('thesis golden vector: 21 bytes', async (t) => {
  const [o, n] = thesisPages();
  const want = '4b0f101112131415161718191a1b1c1d1e04022224';
  for (const [name, got] of allEncodings(o, n)) t.equal(got, want, name);
  t.equal(Buffer.from(want, 'hex').length, 21);
  t.ok(decodePage(o, Buffer.from(want, 'hex')).equals(n), 'native decode');
  t.same(Buffer.from(decodePageTs(o, Buffer.from(want, 'hex'))), n, 'TS decode');
});

t.test('unchanged page encodes to 0 bytes', async (t) => {
  const p = Buffer.alloc(4096, 7);
  for (const [name, got] of allEncodings(p, Buffer.from(p))) t.equal(got, '', name);
  t.ok(decodePage(p, Buffer.alloc(0)).equals(p));
});

t.test('first and last byte, long runs (2-byte lengths)', async (t) => {
  const o = Buffer.alloc(4096);
  const n = Buffer.alloc(4096);
  n[0] = 1; // zrun 0 first
  n.fill(2, 1000, 1300); // nzrun 300: two-byte length
  n[4095] = 3; // changed run at the very end: no trailing zrun
  const e = encodePage(o, n)!;
  t.equal(hex(e), '00' + '01' + '01' + 'e707' + 'ac02' + '02'.repeat(300) + 'eb15' + '01' + '03');
  for (const [name, got] of allEncodings(o, n)) t.equal(got, hex(e), name);
  t.ok(decodePage(o, e).equals(n));
});

t.test('corpus: all encoders agree, decode(encode(x)) == x', { skip: !corpusDir() && 'corpus not found' }, async (t) => {
  for (const f of CORPUS_FILES) {
    const buf = loadPairs(f);
    const pages = buf.length / 8192;
    let mismatches = 0;
    let badRoundTrips = 0;
    let whole = 0;
    for (let i = 0; i < pages; i++) {
      const [o, n] = pair(buf, i);
      const enc = allEncodings(o, n);
      const first = enc.get(levels[0]!)!;
      for (const v of enc.values()) if (v !== first) mismatches++;
      if (first === 'null') {
        whole++;
        continue;
      }
      const d = Buffer.from(first, 'hex');
      if (!decodePage(o, d).equals(n)) badRoundTrips++;
      if (!Buffer.from(decodePageTs(o, d)).equals(n)) badRoundTrips++;
    }
    t.equal(mismatches, 0, `${f}: encoders agree on ${pages} pages`);
    t.equal(badRoundTrips, 0, `${f}: round trips`);
    if (f === 'qsort') t.ok(whole > 0, 'qsort has pages that go whole');
    if (f === 'wset') t.equal(whole, 0, 'wset pages all fit a delta');
  }
});

/** Mutates a copy of page with runs of random length at random places. */
function mutate(page: Buffer, r: () => number, density: number, maxRun: number): Buffer {
  const n = Buffer.from(page);
  let changed = 0;
  const target = Math.floor(density * 4096);
  while (changed < target) {
    const at = Math.floor(r() * 4096);
    const len = 1 + Math.floor(r() * maxRun);
    for (let k = at; k < Math.min(4096, at + len); k++) {
      n[k] = n[k]! ^ (1 + Math.floor(r() * 255));
      changed++;
    }
  }
  return n;
}

t.test('random pages: all levels agree, round trip', async (t) => {
  const r = rng(12345);
  let cases = 0;
  let bad = 0;
  let nulls = 0;
  for (const density of [0.001, 0.01, 0.05, 0.2, 0.4, 0.6, 0.9]) {
    for (const maxRun of [1, 3, 8, 40, 200, 1500]) {
      for (let rep = 0; rep < 12; rep++) {
        const o = Buffer.alloc(4096);
        for (let k = 0; k < 4096; k++) o[k] = r() < 0.5 ? 0 : Math.floor(r() * 256);
        const n = mutate(o, r, density, maxRun);
        const enc = allEncodings(o, n);
        const first = enc.get('ts')!;
        for (const [name, v] of enc) if (v !== first) bad++, t.fail(`${name} differs at density ${density} run ${maxRun}`);
        cases++;
        if (first === 'null') {
          nulls++;
          continue;
        }
        if (!decodePage(o, Buffer.from(first, 'hex')).equals(n)) bad++;
      }
    }
  }
  t.equal(bad, 0, `${cases} random pages`);
  t.ok(nulls > 0 && nulls < cases, 'both deltas and whole pages occurred');
});

t.test("QEMU's overflow rule at its edges", async (t) => {
  // 125 changed runs, first unchanged run 0, one of 127, the rest 1: the delta is exactly
  // 4096 bytes and ends with a changed run. QEMU returns 4096 here (not overflow).
  const o = Buffer.alloc(4096);
  const n = Buffer.from(o);
  const lens: number[] = [];
  for (let j = 0; j < 125; j++) lens.push(j < 96 ? 31 : 30);
  let pos = 0;
  for (let j = 0; j < 125; j++) {
    if (j === 1) pos += 127;
    else if (j > 1) pos += 1;
    n.fill(0xaa, pos, pos + lens[j]!);
    pos += lens[j]!;
  }
  t.equal(pos, 4096, 'layout fills the page');
  const e = encodePage(o, n);
  t.not(e, null, 'a 4096-byte delta is still a delta');
  t.equal(e?.length, 4096);
  for (const [name, got] of allEncodings(o, n)) t.equal(got, hex(e), name);
  t.ok(decodePage(o, e!).equals(n), 'a 4096-byte delta decodes');

  // Same, but the last byte unchanged: 4095 bytes of delta plus an (omitted) trailing run.
  // QEMU checks room for two bytes before that run and reports overflow.
  const n2 = Buffer.from(n);
  n2[4095] = 0;
  for (const [name, got] of allEncodings(o, n2)) t.equal(got, 'null', `${name}: trailing-run overflow`);

  // Sweep densities around the limit: every encoder takes the same decision each time.
  const r = rng(99);
  let deltas = 0;
  let nulls = 0;
  for (let rep = 0; rep < 300; rep++) {
    const m = Buffer.from(o);
    const every = 2 + (rep % 3);
    for (let k = Math.floor(r() * 3); k < 4096; k += every + (r() < 0.3 ? 1 : 0)) m[k] = 1 + (k % 200);
    const enc = allEncodings(o, m);
    const first = enc.get('ts')!;
    for (const [name, v] of enc) if (v !== first) t.fail(`${name} disagrees (rep ${rep})`);
    if (first === 'null') nulls++;
    else deltas++;
  }
  t.ok(nulls > 0 && deltas > 0, `both outcomes near the limit (${deltas} deltas, ${nulls} whole)`);
});

t.test('decoder refuses malformed input (native and TS alike)', async (t) => {
  const o = Buffer.alloc(4096);
  const bad: [string, number[]][] = [
    ['truncated after zrun', [0x05]],
    ['nzrun missing', [0x05, 0x01]],
    ['changed bytes missing', [0x00, 0x04, 1, 2]],
    ['empty changed run', [0x00, 0x00, 0x00]],
    ['empty unchanged run after the first', [0x00, 0x01, 0x09, 0x00, 0x01, 0x09]],
    ['three-byte length', [0x80, 0x80, 0x01, 0x01, 0x09]],
    ['runs past the page', [0xff, 0x1f, 0x02, 1, 2]],
    ['changed run past the page', [0x00, 0x81, 0x20, ...Array(10).fill(1)]],
  ];
  for (const [why, bytes] of bad) {
    t.throws(() => decodePage(o, Buffer.from(bytes)), /xbzrle:/, `native: ${why}`);
    t.throws(() => decodePageTs(o, Buffer.from(bytes)), XbzrleError, `TS: ${why}`);
  }
  t.throws(() => decodePage(o, Buffer.alloc(4097, 1)), /longer than a page/);
  t.throws(() => decodePage(Buffer.alloc(100), Buffer.alloc(0)), /4096/);
  // QEMU accepts a non-minimal two-byte length: so do we.
  t.equal(decodePage(o, Buffer.from([0x81, 0x00, 0x01, 0x07]))[1], 7);
});

t.test('decoder: native and TS agree on random and mutated inputs', async (t) => {
  const r = rng(777);
  const o = Buffer.alloc(4096);
  for (let k = 0; k < 4096; k++) o[k] = k & 0xff;
  const valid: Buffer[] = [];
  for (let i = 0; i < 20; i++) {
    const e = encodePage(o, mutate(o, r, 0.02 + r() * 0.2, 1 + Math.floor(r() * 50)));
    if (e && e.length) valid.push(e);
  }
  let accepted = 0;
  let refused = 0;
  for (let i = 0; i < 4000; i++) {
    let d: Buffer;
    if (i % 2) {
      d = Buffer.alloc(Math.floor(r() * 64));
      for (let k = 0; k < d.length; k++) d[k] = r() < 0.5 ? Math.floor(r() * 8) : Math.floor(r() * 256);
    } else {
      const v = valid[i % valid.length]!;
      d = Buffer.from(v.subarray(0, Math.max(0, v.length - Math.floor(r() * 3))));
      for (let m = 0; m < 1 + Math.floor(r() * 3); m++) if (d.length) d[Math.floor(r() * d.length)] = Math.floor(r() * 256);
    }
    let a: Buffer | Error;
    let b: Uint8Array | Error;
    try {
      a = decodePage(o, d);
    } catch (e) {
      a = e as Error;
    }
    try {
      b = decodePageTs(o, d);
    } catch (e) {
      b = e as Error;
    }
    if (a instanceof Error !== b instanceof Error) t.fail(`disagree on ${d.toString('hex')}`);
    else if (!(a instanceof Error)) {
      accepted++;
      if (!a.equals(b as Uint8Array)) t.fail(`different pages for ${d.toString('hex')}`);
    } else refused++;
  }
  t.ok(accepted > 100 && refused > 100, `accepted ${accepted}, refused ${refused}`);
});
