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
