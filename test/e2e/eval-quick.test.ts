// `npm run eval -- --quick`, every experiment (E1–E8, a few minutes on 2 busy cores): the real
// entry point on real guests writes the report, all eight SVGs with titled axes (units in the
// titles), raw JSON lines, and tables whose numbers were measured. Times are not asserted (the
// report gives them as ratios beside the papers').
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { svgAxisTitles } from '../../eval/main.js';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'eval', 'cli.js');

const ALL = ['E1', 'E2', 'E3', 'E4', 'E5', 'E6', 'E7', 'E8'];

t.test('eval --quick', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'migsafe-eval-quick-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));
  const child = spawn(process.execPath, [CLI, '--quick', '--out', out], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => (err += s));
  const code = await new Promise((r) => child.once('exit', r));
  t.equal(code, 0, `exit 0 (${err.trim().split('\n').slice(-3).join(' / ')})`);
  const report = readFileSync(join(out, 'report.md'), 'utf8');
  for (const id of ALL) {
    const f = join(out, `${id}.svg`);
    if (!t.ok(existsSync(f), `${id}.svg written`)) continue;
    const titles = svgAxisTitles(readFileSync(f, 'utf8'));
    t.ok(titles.length >= 2, `${id}: both axes titled (${titles.join('; ')})`);
    t.ok(titles.some((x) => /\((B|ms|s|1\/s|MiB|4 KiB pages)[^)]*\)/.test(x)), `${id}: a unit in an axis title`);
    t.match(report, new RegExp(`!\\[${id}\\]\\(${id}\\.svg\\)`), `${id}: figure in the report`);
  }
  t.notMatch(report, /\*\*not run:\*\*/, 'no experiment is listed as not run');
  t.match(report, /paper B\/page \| ours B\/page/, 'E1 table: paper beside ours');
  t.match(report, /TCG/, 'the setting says TCG');

  const raw = (id: string) =>
    readFileSync(join(out, 'results', `${id}.jsonl`), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  const e1 = raw('E1');
  t.ok(e1.length >= 14, `E1: ${e1.length} records`);
  t.ok(e1.every((r) => (r.bytesPerPage as number) > 0 && (r.pages as number) > 0), 'E1: every measured bytes/page is > 0');
  const e4 = raw('E4');
  const eager = e4.filter((r) => r.method === 'migsafe eager');
  const qemu = e4.filter((r) => r.method === 'QEMU save+restore');
  t.equal(eager.length, 1, 'E4: one migsafe recovery (quick: 256 MiB, one run)');
  t.equal(qemu.length, 1, "E4: one QEMU restore beside it");
  t.ok((eager[0]!.recoveryMs as number) > 0 && (qemu[0]!.recoveryMs as number) > 0, 'E4: recovery times measured');
  const pages = (eager[0]!.versionPages as { pages: number }[]).reduce((a, v) => a + v.pages, 0);
  t.ok(pages > 0, `E7's input: ${pages} pages checkpointed`);
  const e3 = raw('E3');
  const progress = e3.filter((r) => r.kind === 'guest-progress');
  t.ok(progress.filter((r) => r.side === 'with').length > 3 && progress.filter((r) => r.side === 'without').length > 3, `E3: the guests' progress lines on both sides (${progress.length})`);
  t.equal(e3.filter((r) => r.kind === 'window').length, 2, 'E3: one post-copy migration per side');
  t.ok(progress.some((r) => (r.cycles as number) > 0), 'E3: the guest completed sorts');
  t.match(report, /\| sorts\/s during migration \| \d+\.\d\d \(1 run\) \| \d+\.\d\d \(1 run\) \| \d/, 'E3: measured rates and their ratio in the table');
  // The E4 table row: our median is the measured value, not a placeholder.
  const row = report.split('\n').find((l) => l.startsWith('| 256 |'));
  t.ok(row, 'E4: a row for 256 MiB');
  t.match(row!, new RegExp(`\\| ${(eager[0]!.recoveryMs as number).toFixed(0)} \\(1 run\\) \\|`), 'E4: the row shows the measured recovery');
  // E8: every case migrated once, its requests timed.
  const e8 = raw('E8');
  const migs = e8.filter((r) => r.kind === 'migration');
  t.same(migs.map((r) => r.case).sort(), ['continuous', 'event', 'none'], 'E8: one post-copy migration per case');
  for (const c of ['event', 'continuous', 'none']) {
    const answered = e8
      .filter((r) => r.kind === 'requests' && r.case === c)
      .flatMap((r) => r.latencyMs as (number | null)[])
      .filter((x): x is number => typeof x === 'number');
    t.ok(answered.length > 20, `E8 ${c}: ${answered.length} requests answered and timed`);
    t.ok(answered.every((x) => x > 0), `E8 ${c}: every latency > 0`);
  }
  t.match(report, /\| post-copy without RIC \(--no-checkpoint\) \| before migration \| \d+ \| \d+ \| \d+\.\d \| \d+\.\d \| \d+ \|/, 'E8: measured latencies, throughput and loss in the table');
});
