// `npm run eval`'s options and its report from stored results (no guest is started).
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeRaw } from '../../eval/common.js';
import { parseEvalArgs, runEval, svgAxisTitles } from '../../eval/main.js';

t.test('options', async (t) => {
  const q = parseEvalArgs(['--quick']);
  t.same(q.sizes, [256]);
  t.equal(q.runs, 1);
  t.match(q.outDir, /eval\/out-quick$/);
  const f = parseEvalArgs(['--only', 'e1,E4', '--sizes', '256,1024', '--runs', '2']);
  t.same(f.only, ['E1', 'E4']);
  t.same(f.sizes, [256, 1024]);
  t.throws(() => parseEvalArgs(['--only', 'E9']), /unknown experiment E9/);
  t.throws(() => parseEvalArgs(['--sizes', '100']), /at least 256/);
  t.throws(() => parseEvalArgs(['--runs', '0']), /at least 1/);
  t.throws(() => parseEvalArgs(['--fast']), /unknown option --fast/);
  t.equal(parseEvalArgs(['--report-only', '--note', 'Full run: 1 s']).note, 'Full run: 1 s', '--note (scripts/eval-full.sh passes it)');
});

t.test('--report-only: figures from stored results, nothing measured shows as not run', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'migsafe-eval-unit-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));
  const e4 = [256, 1024].flatMap((memMiB) => [
    { experiment: 'E4', method: 'migsafe eager', memMiB, regionMiB: 144, run: 0, recoveryMs: memMiB * 5, loadMs: memMiB * 4, versionPages: [{ version: 1, pages: memMiB * 100, bytesStored: 1 }], measuredAt: 'T', invocation: 'x' },
    { experiment: 'E4', method: 'QEMU save+restore', memMiB, regionMiB: 144, run: 0, recoveryMs: memMiB * 2, measuredAt: 'T', invocation: 'x' },
  ]);
  writeRaw(out, 'E4', e4);
  const r = await runEval({ ...parseEvalArgs(['--report-only', '--out', out]) }, () => {});
  const report = readFileSync(r.report, 'utf8');
  t.match(report, /\| 1024 \| 144 \| 3000 \| 5120 \(1 run\) \| 1\.71 \|/, 'E4: paper 3000 ms at 1 GiB beside ours, ratio');
  t.match(report, /ms\/GiB/, 'E4: slope compared');
  t.match(report, /## E7:[\s\S]*µs\/page/, 'E7 drawn from E4');
  t.match(report, /## E1:[^#]*\*\*not run:\*\*/, 'E1 not measured here: not run');
  t.match(report, /## E5:[^#]*\*\*not run:\*\* not requested/, 'E5: nothing of E2 or E5 stored');
  const svg = readFileSync(join(out, 'E4.svg'), 'utf8');
  t.same(svgAxisTitles(svg), ['guest RAM (MiB)', 'recovery time (ms)']);
});

t.test('E8 from stored columns: the table, the comparison, both panels', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'migsafe-eval-unit-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));
  const setting = { runs: 1, rate: 50, beforeMs: 1000, afterMs: 1000, bandwidthMiBs: 8, ricIntervalMs: 500, ficIntervalMs: 500, memMiB: 128, workloadMiB: 1, measuredAt: 'T', invocation: 'x' };
  const raw = (['event', 'continuous', 'none'] as const).flatMap((c, k) => {
    const t = Array.from({ length: 200 }, (_, i) => -1000 + i * 20); // -1 s .. 3 s, 50/s
    return [
      { experiment: 'E8', kind: 'migration', case: c, migration: 0, windowMs: 2000, qemuTotalMs: 1500, downtimeMs: 20, ...setting },
      ...(c === 'none' ? [] : [{ experiment: 'E8', kind: 'ric-round', case: c, migration: 0, t: 1000, pauseMs: 50, replicationMs: 100, trigger: 'periodic', ...setting }]),
      { experiment: 'E8', kind: 'requests', case: c, migration: 0, t, latencyMs: t.map((x) => (x > 1900 && x < 2000 ? null : 100 * (k + 1))), ...setting },
      { experiment: 'E8', kind: 'replies', case: c, migration: 0, t: t.map((x) => x + 100), ...setting },
    ];
  });
  writeRaw(out, 'E8', raw);
  const r = await runEval({ ...parseEvalArgs(['--report-only', '--out', out]) }, () => {});
  const report = readFileSync(r.report, 'utf8');
  t.match(report, /\| event-based RIC \(--ric-event\) \| during migration, from the first RIC round \| 100 \| 100 \| 50\.0 \| 8\.0 \| 50 \|/, "E8: the RIC phase of the event case, 4 of its 50 requests lost");
  t.match(report, /\| p50 latency from the first RIC round \| < 1 [^|]*\| 0\.50 \| — \|/, 'E8: event ÷ continuous');
  const titles = svgAxisTitles(readFileSync(join(out, 'E8.svg'), 'utf8'));
  t.ok(titles.includes('reply latency (ms, log scale)') && titles.includes('replies received (1/s, mean per migration)'), `E8: both panels titled (${titles.join('; ')})`);
});
