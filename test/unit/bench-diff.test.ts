// `migsafe bench diff`: the JSON the issue specifies, the ratios line, and refusals of bad
// input. Speed is not asserted (benchmarks measure it); what is asserted is that every case
// ran on the same pages and that every XBZRLE encoder reported the same bytes.
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatJson, formatTable, runDiffBench } from '../../bench/diff.js';
import { native } from '../../src/kernel/native.js';
import { loadPairs } from './corpus.js';

const dir = mkdtempSync(join(tmpdir(), 'migsafe-bench-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

// Small slices of two real corpus files, so the run takes seconds.
const files = (['kv', 'wset'] as const).map((name) => {
  const f = join(dir, `${name}-48.pairs`);
  writeFileSync(f, loadPairs(name).subarray(0, 48 * 8192));
  return f;
});

t.test('one JSON object per file, with every case of the issue', async (t) => {
  const results = await runDiffBench({ files, repeats: 1, sampleMs: 2 });
  const lines = formatJson(results).trim().split('\n');
  t.equal(lines.length, 2, 'one line per corpus file');
  const levels = native().levels();
  for (const [i, line] of lines.entries()) {
    const o = JSON.parse(line);
    t.same(Object.keys(o).sort(), ['file', 'pages', 'results'], 'top-level fields');
    t.equal(o.file, files[i]!.split('/').pop(), 'file is the corpus file name');
    t.equal(o.pages, 48, 'pages');
    for (const r of o.results) {
      t.ok(['encode', 'decode', 'floor', 'compress'].includes(r.op), `${r.name}: op ${r.op}`);
      t.ok([1, 2].includes(r.threads), `${r.name}: threads`);
      t.ok(Number.isFinite(r.pagesPerSec) && r.pagesPerSec > 0, `${r.name}: pagesPerSec ${r.pagesPerSec}`);
      t.ok(Number.isFinite(r.bytesPerPage) && r.bytesPerPage >= 0, `${r.name}: bytesPerPage`);
    }
    const names: string[] = o.results.map((r: { name: string }) => r.name);
    const need = [
      'qemu-style wordwise',
      'xbzrle typescript',
      'batch api',
      'decode native',
      'decode typescript',
      ...levels.map((l) => `xbzrle ${l}`),
      ...['lz4-1', 'zstd-1', 'gzip-1'].flatMap((c) => [`${c} raw pages`, `${c} xbzrle batch`]),
      'combined: xbzrle|words',
    ];
    for (const n of need) t.ok(names.includes(n), `case "${n}" present`);
    // Every XBZRLE encoder encodes the same pages to the same bytes.
    const enc = o.results.filter((r: { name: string }) => r.name === 'qemu-style wordwise' || r.name.startsWith('xbzrle '));
    t.ok(enc.length >= 3, 'wordwise, SIMD levels and TypeScript');
    for (const r of enc) t.equal(r.bytesPerPage, enc[0].bytesPerPage, `${r.name}: same bytes per page as ${enc[0].name}`);
    // Threads: the batch and the floor (the host's reference) on the same tiled pages.
    for (const prefix of ['batch api, pages x', `floor (${levels[0]}), pages x`]) {
      const rows = o.results.filter((r: { name: string }) => r.name.startsWith(prefix));
      t.same(rows.map((r: { threads: number }) => r.threads).sort(), [1, 2], `${prefix}…: 1 and 2 threads`);
    }
  }
  const table = formatTable(results);
  t.match(table, /best encoder \(xbzrle [^)]*\) \/ floor = \d+\.\d\d/, 'table: encoder ratio');
  t.match(table, /2 threads \/ 1 = \d+\.\d\d \(the floor on the same pages: \d+\.\d\d\)/, 'table: thread ratio and its reference');
  t.match(table, /combined: xbzrle\|words: \d+ B\/page = \d\.\d{3} x XBZRLE/, 'table: combined mode over all files');
});

t.test('bad input is refused with the thing to fix', async (t) => {
  await t.rejects(runDiffBench({ files, repeats: 0 }), /--repeats must be a whole number >= 1/);
  await t.rejects(runDiffBench({ files, repeats: 1.5 }), /--repeats/);
  await t.rejects(runDiffBench({ files, sampleMs: 0 }), /--sample-ms must be a number > 0/);
  await t.rejects(runDiffBench({ files: [join(dir, 'missing.pairs')] }), /cannot read corpus file .*missing\.pairs/);
  const odd = join(dir, 'odd.pairs');
  writeFileSync(odd, Buffer.alloc(8192 + 100));
  await t.rejects(runDiffBench({ files: [odd] }), /odd\.pairs: not a \.pairs file \(8192-byte records\)/);
});
