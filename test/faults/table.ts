// Prints the fault matrix table from the results the scenario files appended
// ($MIGSAFE_FAULT_RESULTS, default /tmp/migsafe-fault-results.jsonl). Also writes it to
// $MIGSAFE_FAULT_TABLE when set.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { RESULTS_FILE, SCENARIOS, type RunResult } from './matrix.js';

const results: RunResult[] = existsSync(RESULTS_FILE)
  ? readFileSync(RESULTS_FILE, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as RunResult)
  : [];
const rows = SCENARIOS.filter((s) => results.some((r) => r.scenario === s)).map((s) => {
  const rs = results.filter((r) => r.scenario === s);
  const ok = rs.filter((r) => r.recovered);
  const times = ok.map((r) => r.recoveryMs).filter((x): x is number => x !== null);
  // Losses of every run that got as far as measuring them, passing or not.
  const measured = rs.filter((r) => r.unexplained >= 0);
  const lost = measured.reduce((a, r) => a + r.unexplained, 0);
  const rb = ok.map((r) => r.rolledBack).filter((x) => x >= 0);
  const staleMeasured = rs.filter((r) => typeof r.staleCommits === 'number');
  const stale = staleMeasured.reduce((a, r) => a + (r.staleCommits ?? 0), 0);
  const lostMeasured = rs.filter((r) => typeof r.lostVersions === 'number');
  const lostVersions = lostMeasured.reduce((a, r) => a + (r.lostVersions ?? 0), 0);
  return [
    s,
    String(rs.length),
    `${ok.length}/${rs.length}`,
    (times.length ? `${(Math.min(...times) / 1000).toFixed(1)}–${(Math.max(...times) / 1000).toFixed(1)} s` : 'none needed (VM kept running)') +
      (ok.length && ok.every((r) => r.live) ? ' live (same QEMU)' : ''),
    `${lost} datagrams` +
      (measured.length < rs.length ? ` (${rs.length - measured.length} run(s) ended before measuring)` : '') +
      (rb.length && times.length ? ` (rolled back ${Math.min(...rb)}–${Math.max(...rb)} unreleased)` : ''),
    lostMeasured.length ? `${lostVersions} (${lostMeasured.length} run(s) checked)` : 'not measured',
    staleMeasured.length ? `${stale} (${staleMeasured.length} run(s) checked)` : 'no recovery',
  ];
});
const head = ['scenario', 'runs', 'recovered', 'recovery time', 'data lost', 'reported versions lost', 'stale commits'];
const table = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
process.stdout.write(`${table}\n`);
if (process.env.MIGSAFE_FAULT_TABLE) writeFileSync(process.env.MIGSAFE_FAULT_TABLE, table + '\n');
