// `npm run eval [-- --only E1,E4] [--sizes 256,1024] [--runs N] [--quick] [--out DIR] [--report-only]`:
// the seed papers' evaluation on real guests, side by side with the papers' own values.
// Each experiment is a file of this folder; raw results go to <out>/results/<id>.jsonl, one
// SVG figure per experiment to <out>/<id>.svg, and the report to <out>/report.md.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { ROOT } from '../bench/pipeline.js';
import { NotMeasured, readRaw, writeRaw, type EvalOptions, type Experiment, type Raw } from './common.js';
import { E1 } from './e1-codec-bytes.js';
import { E2 } from './e2-fic-migration-overhead.js';
import { E3 } from './e3-qsort-rate.js';
import { E4 } from './e4-recovery-vs-size.js';
import { E5 } from './e5-ric-downtime.js';
import { E6 } from './e6-ric-interval.js';
import { E7 } from './e7-recovery-vs-pages.js';
import { E8 } from './e8-request-latency.js';
import { NOT_RUN } from './not-run.js';
import { renderSvg } from './plot.js';

export const EXPERIMENTS: Experiment[] = [E1, E2, E3, E4, E5, E6, E7, E8];
const ORDER = ['E1', 'E2', 'E3', 'E4', 'E5', 'E6', 'E7', 'E8'];

export const USAGE = `npm run eval -- [--only E1,E4,...] [--sizes MiB,...] [--intervals MS,...] [--runs N] [--quick] [--out DIR] [--report-only] [--note TEXT]
  Reproduces the seed papers' evaluation (V-Recover §4, the thesis's byte-level experiments) on
  real guests under QEMU/TCG and writes DIR/report.md (paper value, ours, ratio, setting),
  DIR/<id>.svg (one figure per experiment) and DIR/results/<id>.jsonl (raw results).
  --only         experiments to run (default: all that are built: ${EXPERIMENTS.map((e) => e.id).join(', ')})${NOT_RUN.length ? `;\n                 ${NOT_RUN.map((e) => e.id).join(', ')} are not built and are listed as not run` : ''}
  --sizes        guest RAM sizes in MiB for E4/E7 (default 256,1024,2048,4096; --quick: 256)
  --intervals    RIC intervals in ms for E6 (default 10,50,100,500,1000; --quick: 200)
  --runs         repetitions per point (default 3; --quick: 1)
  --quick        small sizes and one run, for CI; fails unless every figure it claims was written
  --out          output directory (default eval/out; --quick: eval/out-quick)
  --report-only  redraw the report and figures from DIR/results without running anything
  --note TEXT    a line for the report's head (scripts/eval-full.sh: its command and duration)
  Results from earlier invocations in DIR are kept (E4/E7 per size, E6 per interval: a later
  run replaces only the points it measured) and reported with the time they were measured.
  Run it under flock /tmp/migsafe-e2e.lock on a shared machine: it starts QEMU guests.
`;

export function parseEvalArgs(argv: string[]): EvalOptions & { help: boolean } {
  const o = { only: [] as string[], sizes: [] as number[], intervals: [] as number[], runs: 0, quick: false, outDir: '', reportOnly: false, help: false, note: undefined as string | undefined };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value\n${USAGE}`);
      return v;
    };
    if (a === '--help' || a === '-h') o.help = true;
    else if (a === '--quick') o.quick = true;
    else if (a === '--report-only') o.reportOnly = true;
    else if (a === '--only') {
      o.only = value().split(',').map((s) => s.trim().toUpperCase()).filter(Boolean);
      const bad = o.only.filter((id) => !ORDER.includes(id));
      if (bad.length) throw new Error(`--only: unknown experiment ${bad.join(', ')} (E1..E8)`);
    } else if (a === '--sizes') {
      o.sizes = value().split(',').map(Number);
      if (o.sizes.some((s) => !Number.isInteger(s) || s < 256 || s % 2)) throw new Error('--sizes: give even whole MiB of at least 256, e.g. --sizes 256,1024');
    } else if (a === '--intervals') {
      o.intervals = value().split(',').map(Number);
      if (o.intervals.some((s) => !Number.isInteger(s) || s < 1)) throw new Error('--intervals: give whole ms of at least 1, e.g. --intervals 10,100,1000');
    } else if (a === '--runs') {
      o.runs = Number(value());
      if (!Number.isInteger(o.runs) || o.runs < 1) throw new Error('--runs: give a whole number of at least 1');
    } else if (a === '--out') o.outDir = resolve(value());
    else if (a === '--note') o.note = value();
    else throw new Error(`unknown option ${a}\n${USAGE}`);
  }
  if (!o.sizes.length) o.sizes = o.quick ? [256] : [256, 1024, 2048, 4096];
  if (!o.runs) o.runs = o.quick ? 1 : 3;
  if (!o.outDir) o.outDir = join(ROOT, 'eval', o.quick ? 'out-quick' : 'out');
  return o;
}

function sh(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return '?';
  }
}

function machineLine(): string {
  const qemu = sh('qemu-system-x86_64', ['--version']).split('\n')[0];
  return `${cpus()[0]?.model ?? '?'}, ${cpus().length} cores, ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM, ${sh('uname', ['-sr'])}, node ${process.version}, ${qemu}, git ${sh('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'])}`;
}

/** Axis titles of an SVG written by vega (aria-label "X-axis titled ..."), for the checks. */
export function svgAxisTitles(svg: string): string[] {
  return [...svg.matchAll(/aria-label="[XY]-axis titled '([^']*)'/g)].map((m) => m[1]!);
}

export async function runEval(o: EvalOptions, log: (s: string) => void = (s) => process.stderr.write(`eval: ${s}\n`)): Promise<{ report: string; failed: string[]; figures: string[] }> {
  mkdirSync(o.outDir, { recursive: true });
  const t0 = Date.now();
  // The note is printed as a line of its own: not inside the command's backticks.
  const args = process.argv.slice(2).filter((a, i, all) => a !== '--note' && all[i - 1] !== '--note');
  const invocation = `npm run eval -- ${args.join(' ')}`.trim();
  const selected = EXPERIMENTS.filter((e) => !o.only.length || o.only.includes(e.id));
  const failed: string[] = [];
  const failures = new Map<string, string>();
  if (!o.reportOnly) {
    for (const e of selected) {
      const s = Date.now();
      log(`${e.id}: ${e.title}`);
      try {
        const measuredAt = new Date().toISOString();
        const raw = (await e.run(o, log)).map((r) => ({ ...r, measuredAt, invocation }));
        if (raw.length) writeRaw(o.outDir, e.id, raw, e.mergeKey?.bind(e));
        log(`${e.id}: done in ${((Date.now() - s) / 1000).toFixed(0)} s (${raw.length} raw records)`);
      } catch (err) {
        failed.push(e.id);
        failures.set(e.id, (err as Error).message.split('\n')[0]!);
        log(`${e.id}: FAILED: ${(err as Error).message}`);
      }
    }
  }
  const all = new Map<string, Raw[]>();
  for (const e of EXPERIMENTS) all.set(e.id, readRaw(o.outDir, e.id) ?? []);
  const sections: string[] = [];
  const summary: string[][] = [];
  const figures: string[] = [];
  for (const id of ORDER) {
    const e = EXPERIMENTS.find((x) => x.id === id);
    if (!e) {
      const n = NOT_RUN.find((x) => x.id === id)!;
      summary.push([id, n.title, n.paper, `not run: ${n.why.split(':')[0]}`]);
      sections.push(`## ${id}: ${n.title}\n\nPaper: ${n.paper}.\n\n**not run:** ${n.why}.\n`);
      continue;
    }
    const raw = all.get(id)!;
    const depends = id === 'E7' ? all.get('E4')! : id === 'E5' ? all.get('E2')! : [];
    const why = failures.get(id) ?? (id === 'E7' && failures.get('E4')) ?? (id === 'E5' && failures.get('E2'));
    if (!raw.length && !depends.length) {
      const reason = why ? `it failed in this run: ${why}` : `not requested in any run into this directory (${e.command})`;
      summary.push([id, e.title, e.paper, `not run: ${reason}`]);
      sections.push(`## ${id}: ${e.title}\n\nPaper: ${e.paper}.\n\n**not run:** ${reason}.\n`);
      if (selected.includes(e) && !failed.includes(id)) failed.push(id);
      continue;
    }
    try {
      const r = e.render(raw, all);
      const svg = await renderSvg(r.figure);
      const file = `${id}.svg`;
      writeFileSync(join(o.outDir, file), svg);
      figures.push(join(o.outDir, file));
      const src = raw.length ? raw : depends;
      const when = [...new Set(src.map((x) => x.measuredAt as string))].join(', ');
      const how = [...new Set(src.map((x) => x.invocation as string))].join('; ');
      summary.push([id, e.title, e.paper, `measured ${when}`, `[figure](${file})`]);
      sections.push(
        [
          `## ${id}: ${e.title}`,
          '',
          `Paper: ${e.paper}.`,
          '',
          `**Setting:** ${r.setting}`,
          '',
          `![${id}](${file})`,
          '',
          r.table,
          '',
          ...(r.notes ?? []).map((n) => `${n}\n`),
          `Measured ${when} by \`${how}\`; raw results: [results/${raw.length ? id : id === 'E7' ? 'E4' : 'E2'}.jsonl](results/${raw.length ? id : id === 'E7' ? 'E4' : 'E2'}.jsonl). Alone: \`${e.command}\`.`,
          '',
        ].join('\n'),
      );
    } catch (err) {
      if (!(err instanceof NotMeasured)) throw err;
      const reason = why ? `it failed in this run: ${why}` : err.message;
      summary.push([id, e.title, e.paper, `not run: ${reason}`]);
      sections.push(`## ${id}: ${e.title}\n\nPaper: ${e.paper}.\n\n**not run:** ${reason}.\n`);
      if (selected.includes(e) && !failed.includes(id)) failed.push(id);
    }
  }
  const secs = (Date.now() - t0) / 1000;
  const report = [
    '# migsafe evaluation: the seed papers\' experiments, reproduced',
    '',
    `Command: \`${invocation}\`${o.reportOnly ? ' (report redrawn from stored results)' : ''}; ${o.quick ? 'quick (CI) settings: small sizes, one run — not the full evaluation; ' : ''}this invocation took ${secs.toFixed(0)} s.`,
    '',
    ...(o.note ? [o.note, ''] : []),
    `Machine: ${machineLine()}. Every guest runs under TCG (no KVM on this host); the papers ran KVM on dual six-core Xeons with 1 Gbit/s links. Every table shows the paper's value, ours and the ratio, and each section says how our setting differs.`,
    '',
    '| id | experiment | paper | status | figure |',
    '|---|---|---|---|---|',
    ...summary.map((r) => `| ${r.join(' | ')}${r.length < 5 ? ' | — ' : ''}|`),
    '',
    ...sections,
  ].join('\n');
  writeFileSync(join(o.outDir, 'report.md'), report);
  // --quick checks what it claims: each figure of a selected experiment exists and has titled axes.
  for (const e of selected) {
    const f = join(o.outDir, `${e.id}.svg`);
    if (!existsSync(f)) {
      if (!failed.includes(e.id)) failed.push(e.id);
      continue;
    }
    if (svgAxisTitles(readFileSync(f, 'utf8')).length < 2 && !failed.includes(e.id)) failed.push(e.id);
  }
  log(`report: ${join(o.outDir, 'report.md')} (${secs.toFixed(0)} s)${failed.length ? `; not produced: ${failed.join(', ')}` : ''}`);
  return { report: join(o.outDir, 'report.md'), failed, figures };
}
