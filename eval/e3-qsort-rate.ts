// E3 — V-Recover Fig. 5 and 11: a CPU-intensive guest's rate (sorts per second) during
// post-copy migration with FIC/RIC and without. One bench:migration run with the qsort guest
// (MIGSAFE_BENCH_WORKLOAD=qsort): both sides' progress lines stamped by the host as they
// arrive, and each migration's start and end.
import { machine, med, spread, table, type Experiment, type Raw } from './common.js';
import { migrationRaw, runMigrationBench } from './e2-fic-migration-overhead.js';

const BEFORE_MS = 2000; // the rate before a migration: over this long before it starts

/** Sorts per second between two progress lines, or NaN when the span is empty. */
function rateOver(series: Raw[], from: number, to: number): number {
  const inside = series.filter((s) => (s.t as number) >= from && (s.t as number) <= to);
  const before = series.filter((s) => (s.t as number) < from).pop();
  const pts = before ? [before, ...inside] : inside;
  if (pts.length < 2) return NaN;
  const a = pts[0]!;
  const b = pts[pts.length - 1]!;
  return (((b.cycles as number) - (a.cycles as number)) * 1000) / ((b.t as number) - (a.t as number));
}

export const E3: Experiment = {
  id: 'E3',
  title: 'Quicksort rate during migration with FIC / RIC',
  paper: 'V-Recover Fig. 5 (FIC) and 11 (RIC): sorts per second similar with and without, a similar sharp drop at downtime',
  command: 'npm run eval -- --only E3 --runs 3',
  async run(o, log) {
    return migrationRaw(await runMigrationBench(o, log, { MIGSAFE_BENCH_MODES: 'postcopy', MIGSAFE_BENCH_WORKLOAD: 'qsort' }), 'E3');
  },
  render(raw) {
    const fig: { side: string; migration: number; tS: number; rate: number }[] = [];
    const rates: Record<string, { during: number[]; before: number[] }> = { with: { during: [], before: [] }, without: { during: [], before: [] } };
    for (const side of ['with', 'without'] as const) {
      const series = raw.filter((r) => r.kind === 'guest-progress' && r.side === side);
      const windows = raw.filter((r) => r.kind === 'window' && r.side === side);
      for (const w of windows) {
        const start = w.start as number;
        const end = w.end as number;
        rates[side]!.during.push(rateOver(series, start, end));
        rates[side]!.before.push(rateOver(series, start - BEFORE_MS, start));
        // The figure: the rate between consecutive progress lines, around this migration.
        const near = series.filter((s) => (s.t as number) >= start - 8000 && (s.t as number) <= end + 8000);
        for (let i = 1; i < near.length; i++) {
          const dt = (near[i]!.t as number) - (near[i - 1]!.t as number);
          if (dt <= 0) continue;
          fig.push({ side: side === 'with' ? 'with FIC/RIC' : 'without (checkpointing off)', migration: w.migration as number, tS: ((near[i]!.t as number) - start) / 1000, rate: (((near[i]!.cycles as number) - (near[i - 1]!.cycles as number)) * 1000) / dt });
        }
      }
    }
    const fin = (xs: number[]) => xs.filter(Number.isFinite);
    const dw = med(fin(rates.with!.during));
    const dwo = med(fin(rates.without!.during));
    const rows = [
      ['sorts/s before migration (2 s)', spread(fin(rates.without!.before), 2), spread(fin(rates.with!.before), 2), (med(fin(rates.with!.before)) / med(fin(rates.without!.before))).toFixed(2), '— (similar, no value stated)', '—'],
      ['sorts/s during migration', spread(fin(rates.without!.during), 2), spread(fin(rates.with!.during), 2), (dw / dwo).toFixed(2), '≈ 1 ("similar for both FIC and vanilla post-copy")', (dw / dwo).toFixed(2)],
    ];
    const first = raw[0] ?? {};
    return {
      setting:
        `${machine()}; bench:migration with the qsort guest (128 MiB, 1 MiB of ints — 261 120 — filled with random values, sorted, checked, repeated, unpaced), ` +
        `post-copy at ${first.bandwidthMiBs as number} MiB/s, ${first.runs as number} migration(s) per side, the FIC/RIC side at --interval 1000 --max-time 200, RIC every ${first.ricIntervalMs as number} ms; ` +
        `sorts are counted from the guest's progress lines (about one a second) as the host receives them, so the rate is resolved to ~1 s. ` +
        `The paper: a 400 MB quicksort on KVM, the rate over a whole migration; it states no number, only that the two are similar — the paper column is that ratio, ≈ 1.`,
      table: table(['measure', 'without FIC/RIC', 'with FIC/RIC', 'with ÷ without', 'paper with ÷ without', 'ours ÷ paper'], rows),
      figure: {
        title: { text: 'E3: quicksort rate around a post-copy migration', subtitle: 'qsort guest 128 MiB (1 MiB sorted), TCG, 2 cores; 0 s = migration start' },
        data: { values: fig },
        mark: { type: 'line', point: true, interpolate: 'step-before' },
        encoding: {
          x: { field: 'tS', type: 'quantitative', title: 'time from migration start (s)' },
          y: { field: 'rate', type: 'quantitative', title: 'sorts per second (1/s)' },
          color: { field: 'side', type: 'nominal', title: 'series' },
          detail: { field: 'migration', type: 'nominal' },
        },
      },
      notes: ['Figure: the rate between consecutive progress lines, one line per migration.'],
    };
  },
};
