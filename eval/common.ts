// What every experiment of `npm run eval` shares: its shape, the run's options, spreads over
// runs, raw results as JSON lines, and Markdown tables.
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TopLevelSpec } from 'vega-lite';

export interface EvalOptions {
  /** Experiment ids to run (E1..E8); empty: all. */
  only: string[];
  /** Guest sizes in MiB for the experiments that vary it (E4, E7). */
  sizes: number[];
  /** RIC intervals in ms for E6 (empty: its defaults). */
  intervals: number[];
  /** Repetitions per point. */
  runs: number;
  quick: boolean;
  /** Where report.md, the SVGs and results/*.jsonl go. */
  outDir: string;
  /** A line for the report's head (eval-full.sh: the run's command and duration). */
  note?: string;
  /** Only redraw the report from the JSON lines already in outDir. */
  reportOnly: boolean;
}

/** One raw measurement, as written to results/<id>.jsonl (each line carries its setting). */
export type Raw = Record<string, unknown> & { experiment: string };

export interface Rendered {
  /** What was run: guest size, workload, interval, runs, accelerator, and how it differs from the paper's. */
  setting: string;
  /** Markdown table: paper value, our value, ratio. */
  table: string;
  /** The figure, as a Vega-Lite spec (rendered to SVG by plot.ts). */
  figure: TopLevelSpec;
  notes?: string[];
}

export interface Experiment {
  id: string;
  title: string;
  /** The paper's figure this reproduces. */
  paper: string;
  /** The command that reproduces it alone. */
  command: string;
  /** Runs the experiment; returns its raw measurements. */
  run(o: EvalOptions, log: (s: string) => void): Promise<Raw[]>;
  /** Records of an earlier invocation with a key this one did not measure are kept (E4: per guest size). */
  mergeKey?(r: Raw): string;
  /** Table and figure from raw measurements (this experiment's, and others' it draws on). */
  render(raw: Raw[], all: Map<string, Raw[]>): Rendered;
}

/** An experiment that is not built: the report says why, and nothing is measured. */
export interface NotRun {
  id: string;
  title: string;
  paper: string;
  why: string;
}

export function resultsDir(outDir: string): string {
  return join(outDir, 'results');
}

export function writeRaw(outDir: string, id: string, raw: Raw[], mergeKey?: (r: Raw) => string): void {
  const dir = resultsDir(outDir);
  mkdirSync(dir, { recursive: true });
  const f = join(dir, `${id}.jsonl`);
  const keys = new Set(mergeKey ? raw.map(mergeKey) : []);
  const kept = mergeKey ? (readRaw(outDir, id) ?? []).filter((r) => !keys.has(mergeKey(r))) : [];
  writeFileSync(f, '');
  for (const r of [...kept, ...raw]) appendFileSync(f, JSON.stringify(r) + '\n');
}

export function readRaw(outDir: string, id: string): Raw[] | undefined {
  const f = join(resultsDir(outDir), `${id}.jsonl`);
  if (!existsSync(f)) return undefined;
  return readFileSync(f, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as Raw);
}

export function sorted(xs: number[]): number[] {
  return [...xs].sort((a, b) => a - b);
}

export function med(xs: number[]): number {
  const s = sorted(xs);
  if (!s.length) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** "median (min–max, n runs)", or the single value when there is one run. */
export function spread(xs: number[], digits = 0, unit = '', noun = 'run'): string {
  if (!xs.length) return 'not measured';
  const f = (x: number) => x.toFixed(digits);
  if (xs.length === 1) return `${f(xs[0]!)}${unit} (1 ${noun})`;
  return `${f(med(xs))}${unit} (${f(Math.min(...xs))}–${f(Math.max(...xs))}, ${xs.length} ${noun}s)`;
}

export function ratio(ours: number, paper: number | undefined, digits = 2): string {
  if (paper === undefined || !Number.isFinite(paper) || !Number.isFinite(ours)) return '—';
  return (ours / paper).toFixed(digits);
}

export function table(head: string[], rows: (string | number)[][]): string {
  return [
    `| ${head.join(' | ')} |`,
    `|${head.map(() => '---').join('|')}|`,
    ...rows.map((r) => `| ${r.join(' | ')} |`),
  ].join('\n');
}

/** The machine the run is on, for every setting line. */
export function machine(): string {
  return 'QEMU under TCG (`-accel tcg`, no KVM), a shared 2-core host';
}

/** Thrown by render when nothing it needs was measured: the report says "not run: <message>". */
export class NotMeasured extends Error {}
