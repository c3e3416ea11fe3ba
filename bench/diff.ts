// Micro-benchmark of the page-delta kernel on real guest page pairs (`migsafe bench diff`).
//
// On the same pages, in one run: QEMU-style word-at-a-time encoder, every SIMD level, the
// pure-TypeScript encoder, the floor (both pages read completely with the best SIMD compare),
// decoders, the batch API (1 and 2 threads, with the floor on the same pages as the host's
// reference for two threads), and per codec the bytes and speed on raw pages,
// on XBZRLE deltas and in the combined mode.
//
// Measuring on a shared machine: every case is sampled in turn (round robin) so load changes
// hit all cases alike, and the median of the samples is reported. Single-threaded cases are
// timed in process CPU time (immune to time slices lost to other processes); multi-threaded
// cases, and the single-threaded case they are compared with, in wall time.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { native, type Codec, type CpuLevel } from '../src/kernel/native.js';
import { batchBound, encodeBatch } from '../src/kernel/page-delta.js';
import { compress, packBatch } from '../src/kernel/codecs.js';
import { decodePageTs, encodePageTs } from '../src/kernel/xbzrle-ts.js';

const PAGE = 4096;

export type Op = 'encode' | 'decode' | 'floor' | 'compress';

export interface CaseResult {
  name: string;
  op: Op;
  threads: number;
  pagesPerSec: number;
  bytesPerPage: number;
  /** Bytes read per page, for GB/s (both pages for encode/floor, one page otherwise). */
  bytesIn: number;
  clock: 'cpu' | 'wall';
}

export interface FileResult {
  file: string;
  pages: number;
  results: CaseResult[];
}

export interface DiffBenchOptions {
  /** .pairs files; default: every *.pairs in the default corpus directory. */
  files?: string[];
  /** Samples per case (median reported); default 7. */
  repeats?: number;
  /** Target time of one sample in ms; default 40. */
  sampleMs?: number;
  /** Progress lines (stderr in the CLI). */
  progress?: (line: string) => void;
}

/**
 * The corpus: $MIGSAFE_CORPUS, else ../shared/corpus next to the repository (this file is
 * dist/bench/diff.js or bench/diff.ts), else /work/shared/corpus (a clone made elsewhere, as
 * CI's fresh one). The first that holds .pairs files; an error naming them all if none does.
 */
export function defaultCorpusDir(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const repo = basename(dirname(here)) === 'dist' ? resolve(here, '../..') : resolve(here, '..');
  const candidates = [process.env.MIGSAFE_CORPUS, resolve(repo, '../shared/corpus'), '/work/shared/corpus'].filter((d): d is string => !!d);
  const found = candidates.find((d) => existsSync(d) && readdirSync(d).some((f) => f.endsWith('.pairs')));
  if (!found) throw new Error(`no page corpus (.pairs files) in ${candidates.join(', ')}: set MIGSAFE_CORPUS=DIR or give --corpus FILE...`);
  return found;
}

export function defaultCorpusFiles(): string[] {
  const dir = defaultCorpusDir();
  const order = ['idle', 'wset', 'kv', 'qsort'];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.pairs'))
    .sort((a, b) => {
      const ia = order.indexOf(basename(a, '.pairs'));
      const ib = order.indexOf(basename(b, '.pairs'));
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
    })
    .map((f) => join(dir, f));
}

interface Case {
  name: string;
  op: Op;
  threads: number;
  clock: 'cpu' | 'wall';
  bytesIn: number;
  /** Pages one pass covers (the file's pages, or more for tiled inputs). */
  pagesPerPass?: number;
  /** Runs `inner` passes over the pages; returns seconds (in this case's clock) and output bytes of one pass. */
  run(inner: number): { seconds: number; bytes: number };
  inner: number;
  samples: number[];
  bytes: number;
}

function cpuNow(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

function wallNow(): number {
  return Number(process.hrtime.bigint()) / 1e9;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Times fn with the case's clock. */
function timed(clock: 'cpu' | 'wall', fn: () => number): { seconds: number; bytes: number } {
  const now = clock === 'cpu' ? cpuNow : wallNow;
  const t0 = now();
  const bytes = fn();
  return { seconds: now() - t0, bytes };
}

function buildCases(pairs: Buffer, pages: number): Case[] {
  const n = native();
  const levels = n.levels();
  const best = levels[0]!;
  const cases: Case[] = [];
  const add = (c: Omit<Case, 'inner' | 'samples' | 'bytes'>) => cases.push({ ...c, inner: 1, samples: [], bytes: 0 });

  // Kernel loops inside the addon (no per-page N-API cost), timed there in thread CPU time,
  // or in wall time (threaded cases, on other pages).
  const kernel =
    (op: Parameters<typeof n.benchKernel>[0], level?: CpuLevel, extra: object = {}, clock: 'cpu' | 'wall' = 'cpu', on = pairs) =>
    (inner: number) => {
      const r = n.benchKernel(op, on, { level, repeats: 1, inner, ...extra });
      return { seconds: (clock === 'cpu' ? r.cpuSeconds : r.seconds)[0]!, bytes: r.bytes };
    };

  // A pass written in TypeScript, repeated `inner` times, timed in CPU time; returns the last pass's bytes.
  const cpuPasses = (pass: () => number) => (inner: number) =>
    timed('cpu', () => {
      let bytes = 0;
      for (let k = 0; k < inner; k++) bytes = pass();
      return bytes;
    });

  add({ name: `floor (${best})`, op: 'floor', threads: 1, clock: 'cpu', bytesIn: 2 * PAGE, run: kernel('floor', best) });
  add({ name: 'qemu-style wordwise', op: 'encode', threads: 1, clock: 'cpu', bytesIn: 2 * PAGE, run: kernel('wordwise') });
  for (const l of levels) {
    add({ name: `xbzrle ${l}`, op: 'encode', threads: 1, clock: 'cpu', bytesIn: 2 * PAGE, run: kernel('encode', l) });
  }
  if (best !== 'scalar') {
    // As the batch runs it: at avx512bw each page's compare pass spread over the previous page's
    // runs; at avx2 the pass through the same cursor, run whole just before the page's walk.
    add({ name: `xbzrle ${best}, overlapped`, op: 'encode', threads: 1, clock: 'cpu', bytesIn: 2 * PAGE, run: kernel('encode-overlapped', best) });
  }
  add({
    name: 'xbzrle typescript',
    op: 'encode',
    threads: 1,
    clock: 'cpu',
    bytesIn: 2 * PAGE,
    run: cpuPasses(() => {
      let bytes = 0;
      for (let i = 0; i < pages; i++) {
        const o = pairs.subarray(i * 2 * PAGE, i * 2 * PAGE + PAGE);
        const e = encodePageTs(o, pairs.subarray(i * 2 * PAGE + PAGE, (i + 1) * 2 * PAGE));
        bytes += e === null ? PAGE : e.length;
      }
      return bytes;
    }),
  });

  // Batch API: ram = the new pages, shadow = the old ones, reset before every pass (untimed).
  const ram = Buffer.alloc(pages * PAGE);
  const shadow = Buffer.alloc(pages * PAGE);
  const oldPages = Buffer.alloc(pages * PAGE);
  for (let i = 0; i < pages; i++) {
    pairs.copy(oldPages, i * PAGE, i * 2 * PAGE, i * 2 * PAGE + PAGE);
    pairs.copy(ram, i * PAGE, i * 2 * PAGE + PAGE, (i + 1) * 2 * PAGE);
  }
  // The output buffer is reused from call to call (encodeBatch's `out`), as a loop would; the
  // second row allocates a new one per call.
  const batchRun = (clock: 'cpu' | 'wall', threads: number, r: Buffer, s: Buffer, o: Buffer, reuse = true) => {
    const out = reuse ? Buffer.alloc(batchBound(r.length / PAGE)) : undefined;
    return (inner: number) => {
      let seconds = 0;
      let bytes = 0;
      for (let k = 0; k < inner; k++) {
        o.copy(s);
        const t = timed(clock, () => encodeBatch(r, s, null, { threads, level: best, out }).length);
        seconds += t.seconds;
        bytes = t.bytes;
      }
      return { seconds, bytes };
    };
  };
  add({ name: 'batch api', op: 'encode', threads: 1, clock: 'cpu', bytesIn: 2 * PAGE, run: batchRun('cpu', 1, ram, shadow, oldPages) });
  add({
    name: 'batch api, new buffer per call',
    op: 'encode',
    threads: 1,
    clock: 'cpu',
    bytesIn: 2 * PAGE,
    run: batchRun('cpu', 1, ram, shadow, oldPages, false),
  });
  add({ name: 'batch, in-addon loop', op: 'encode', threads: 1, clock: 'cpu', bytesIn: 2 * PAGE, run: kernel('batch', best) });

  // Threads: the same pages tiled 8 times so each thread has a real share; wall clock.
  const tiles = 8;
  const ramT = Buffer.alloc(tiles * ram.length);
  const oldT = Buffer.alloc(tiles * ram.length);
  for (let k = 0; k < tiles; k++) {
    ram.copy(ramT, k * ram.length);
    oldPages.copy(oldT, k * ram.length);
  }
  const shadowT = Buffer.alloc(oldT.length);
  for (const threads of [1, 2]) {
    add({
      name: `batch api, pages x${tiles}`,
      op: 'encode',
      threads,
      clock: 'wall',
      bytesIn: 2 * PAGE,
      pagesPerPass: tiles * pages,
      run: batchRun('wall', threads, ramT, shadowT, oldT),
    });
  }
  // The same tiled pages only read (the floor), on 1 and 2 threads: what this host gives a
  // second thread in this run, the reference for the batch's "2 threads / 1".
  const pairsT = Buffer.alloc(tiles * pairs.length);
  for (let k = 0; k < tiles; k++) pairs.copy(pairsT, k * pairs.length);
  for (const threads of [1, 2]) {
    add({
      name: `floor (${best}), pages x${tiles}`,
      op: 'floor',
      threads,
      clock: 'wall',
      bytesIn: 2 * PAGE,
      pagesPerPass: tiles * pages,
      run: kernel('floor', best, { threads }, 'wall', pairsT),
    });
  }

  // Decoders.
  add({ name: 'decode native', op: 'decode', threads: 1, clock: 'cpu', bytesIn: PAGE, run: kernel('decode') });
  const deltas = Array.from({ length: pages }, (_, i) =>
    n.encodePage(pairs.subarray(i * 2 * PAGE, i * 2 * PAGE + PAGE), pairs.subarray(i * 2 * PAGE + PAGE, (i + 1) * 2 * PAGE)),
  );
  add({
    name: 'decode typescript',
    op: 'decode',
    threads: 1,
    clock: 'cpu',
    bytesIn: PAGE,
    run: cpuPasses(() => {
      let x = 0;
      for (let i = 0; i < pages; i++) {
        const d = deltas[i];
        if (d) x += decodePageTs(pairs.subarray(i * 2 * PAGE, i * 2 * PAGE + PAGE), d)[0]!;
      }
      return x & 0;
    }),
  });

  // Codecs: raw pages one by one, XBZRLE deltas as one batch frame, combined modes.
  const records = encodeBatch(ram, oldPages, null, { updateShadow: false });
  const codecs: [Codec, number][] = [
    ['lz4', 1],
    ['zstd', 1],
    ['zstd', 3],
    ['gzip', 1],
    ['gzip', 6],
  ];
  for (const [codec, level] of codecs) {
    add({
      name: `${codec}-${level} raw pages`,
      op: 'compress',
      threads: 1,
      clock: 'cpu',
      bytesIn: PAGE,
      run: kernel('compress-page', undefined, { codec, codecLevel: level }),
    });
    add({
      name: `${codec}-${level} xbzrle batch`,
      op: 'compress',
      threads: 1,
      clock: 'cpu',
      bytesIn: PAGE,
      run: cpuPasses(() => compress(codec, records, level).length),
    });
  }
  // Combined mode: the per-page choice between an XBZRLE delta and packed words (encodeBatch
  // with dense), as stored (record headers included); then with a codec over the records
  // (packBatch), which saves more and costs more.
  const dense = () => encodeBatch(ram, oldPages, null, { updateShadow: false, dense: true, level: best });
  add({ name: 'combined: xbzrle|words', op: 'compress', threads: 1, clock: 'cpu', bytesIn: 2 * PAGE, run: cpuPasses(() => dense().length) });
  for (const [codec, level] of [
    ['lz4', 1],
    ['zstd', 1],
  ] as [Codec, number][]) {
    add({
      name: `combined: xbzrle|words + ${codec}-${level}`,
      op: 'compress',
      threads: 1,
      clock: 'cpu',
      bytesIn: 2 * PAGE,
      run: cpuPasses(() => packBatch(dense(), { codec, level }).length),
    });
  }
  return cases;
}

export async function runDiffBench(opts: DiffBenchOptions = {}): Promise<FileResult[]> {
  const files = opts.files?.length ? opts.files : defaultCorpusFiles();
  const repeats = opts.repeats ?? 7;
  const sampleMs = opts.sampleMs ?? 40;
  const progress = opts.progress ?? (() => {});
  if (!Number.isInteger(repeats) || repeats < 1) throw new Error(`bench diff: --repeats must be a whole number >= 1 (got ${repeats})`);
  if (!Number.isFinite(sampleMs) || sampleMs <= 0) throw new Error(`bench diff: --sample-ms must be a number > 0 (got ${sampleMs})`);
  const out: FileResult[] = [];
  for (const file of files) {
    let pairs: Buffer;
    try {
      pairs = readFileSync(file);
    } catch (e) {
      throw new Error(`bench diff: cannot read corpus file ${file}: ${(e as Error).message}`);
    }
    if (pairs.length === 0 || pairs.length % (2 * PAGE)) throw new Error(`${file}: not a .pairs file (8192-byte records)`);
    const pages = pairs.length / (2 * PAGE);
    const cases = buildCases(pairs, pages);
    // Calibrate: passes per sample so a sample lasts about sampleMs.
    for (const c of cases) {
      const t = c.run(1);
      c.inner = Math.max(1, Math.round(sampleMs / 1000 / Math.max(t.seconds, 1e-6)));
    }
    for (let r = 0; r < repeats; r++) {
      progress(`${basename(file)}: sample ${r + 1}/${repeats} of ${cases.length} cases`);
      for (const c of cases) {
        const t = c.run(c.inner);
        c.samples.push(t.seconds / c.inner);
        c.bytes = t.bytes;
        await new Promise((res) => setImmediate(res)); // let progress output flush
      }
    }
    out.push({
      file: basename(file),
      pages,
      results: cases.map((c) => ({
        name: c.name,
        op: c.op,
        threads: c.threads,
        pagesPerSec: (c.pagesPerPass ?? pages) / median(c.samples),
        bytesPerPage: c.op === 'floor' || c.op === 'decode' ? 0 : c.bytes / (c.pagesPerPass ?? pages),
        bytesIn: c.bytesIn,
        clock: c.clock,
      })),
    });
  }
  return out;
}

function fmtRate(x: number): string {
  return x >= 1e6 ? `${(x / 1e6).toFixed(2)} M` : `${(x / 1e3).toFixed(0)} k`;
}

/** Readable table per file, plus the acceptance ratios. */
export function formatTable(results: FileResult[]): string {
  const lines: string[] = [];
  const totals = { xbzrle: 0, pages: 0, combined: new Map<string, { bytes: number; secs: number }>() };
  for (const f of results) {
    const find = (name: string) => f.results.find((r) => r.name === name);
    const floor = f.results.find((r) => r.op === 'floor')!;
    lines.push(`\n${f.file}: ${f.pages} page pairs`);
    lines.push(
      `${'case'.padEnd(38)} ${'op'.padEnd(8)} thr ${'pages/s'.padStart(9)} ${'GB/s'.padStart(6)} ${'B/page'.padStart(7)} ${'x floor'.padStart(7)} clock`,
    );
    for (const r of f.results) {
      lines.push(
        `${r.name.padEnd(38)} ${r.op.padEnd(8)} ${String(r.threads).padStart(3)} ${fmtRate(r.pagesPerSec).padStart(9)} ${((r.pagesPerSec * r.bytesIn) / 1e9).toFixed(2).padStart(6)} ${(r.bytesPerPage ? r.bytesPerPage.toFixed(0) : '').padStart(7)} ${(r.op === 'encode' || r.op === 'floor' ? (r.pagesPerSec / floor.pagesPerSec).toFixed(2) : '').padStart(7)} ${r.clock}`,
      );
    }
    const encoders = f.results.filter((r) => r.op === 'encode' && r.name.startsWith('xbzrle ') && r.name !== 'xbzrle typescript');
    const bestEnc = encoders.reduce((a, b) => (b.pagesPerSec > a.pagesPerSec ? b : a));
    const batch = find('batch api')!;
    const inAddon = find('batch, in-addon loop')!;
    const t1 = f.results.find((r) => r.name.startsWith('batch api, pages x') && r.threads === 1)!;
    const t2 = f.results.find((r) => r.name.startsWith('batch api, pages x') && r.threads === 2)!;
    const f1 = f.results.find((r) => r.op === 'floor' && r.name.includes(', pages x') && r.threads === 1);
    const f2 = f.results.find((r) => r.op === 'floor' && r.name.includes(', pages x') && r.threads === 2);
    lines.push(
      `ratios: best encoder (${bestEnc.name}) / floor = ${(bestEnc.pagesPerSec / floor.pagesPerSec).toFixed(2)}; ` +
        `batch api / best encoder loop = ${(batch.pagesPerSec / bestEnc.pagesPerSec).toFixed(2)}; ` +
        `batch api / same work in-addon = ${(batch.pagesPerSec / inAddon.pagesPerSec).toFixed(2)}; ` +
        `2 threads / 1 = ${(t2.pagesPerSec / t1.pagesPerSec).toFixed(2)}` +
        (f1 && f2 ? ` (the floor on the same pages: ${(f2.pagesPerSec / f1.pagesPerSec).toFixed(2)})` : ''),
    );
    totals.pages += f.pages;
    totals.xbzrle += bestEnc.bytesPerPage * f.pages;
    for (const r of f.results.filter((x) => x.name.startsWith('combined'))) {
      const c = totals.combined.get(r.name) ?? { bytes: 0, secs: 0 };
      c.bytes += r.bytesPerPage * f.pages;
      c.secs += f.pages / r.pagesPerSec;
      totals.combined.set(r.name, c);
    }
  }
  if (results.length > 1) {
    lines.push(`\nall files (${totals.pages} pages): plain XBZRLE ${(totals.xbzrle / totals.pages).toFixed(0)} B/page`);
    for (const [name, c] of totals.combined) {
      lines.push(
        `  ${name}: ${(c.bytes / totals.pages).toFixed(0)} B/page = ${(c.bytes / totals.xbzrle).toFixed(3)} x XBZRLE, ` +
          `${fmtRate(totals.pages / c.secs)} pages/s encode+compress, one core`,
      );
    }
  }
  return lines.join('\n') + '\n';
}

/** JSON lines: one object per corpus file, as `migsafe bench diff --json` prints them. */
export function formatJson(results: FileResult[]): string {
  return (
    results
      .map((f) =>
        JSON.stringify({
          file: f.file,
          pages: f.pages,
          results: f.results.map((r) => ({
            name: r.name,
            op: r.op,
            threads: r.threads,
            pagesPerSec: Math.round(r.pagesPerSec),
            bytesPerPage: Math.round(r.bytesPerPage * 10) / 10,
            clock: r.clock,
          })),
        }),
      )
      .join('\n') + '\n'
  );
}
