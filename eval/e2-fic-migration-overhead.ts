// E2 — V-Recover Fig. 4: FIC's overhead on total migration time. Reuses bench/migration.ts
// (npm run bench:migration, run as a child with --json): two clusters of three hosts in network
// namespaces run the same guest and workload, one with checkpointing off, one with FIC/RIC;
// their migrations alternate, pre-copy and post-copy, N times each.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { ROOT } from '../bench/pipeline.js';
import { machine, med, spread, table, type EvalOptions, type Experiment, type Raw } from './common.js';
import { PAPER_E2 } from './papers.js';

interface BenchJson {
  runs: number;
  ricIntervalMs?: number;
  bandwidthMiBs: number;
  qemu: string;
  load: { before: string; after: string };
  samples: { side: 'with' | 'without'; mode: string; totalMs: number; downtimeMs: number; finalPauseMs?: number }[];
  workload?: string;
  guest?: { side: 'with' | 'without'; series: { t: number; counter: number; cycles: number }[]; windows: { mode: string; start: number; end: number }[] }[];
  ricRounds: { version: number; pauseMs: number; replicationMs: number; pages?: number; bytesStored?: number; trigger?: string; dirtySource?: string }[];
}

/** Runs bench:migration once and returns its JSON (shared by E2 and E5). */
export async function runMigrationBench(o: EvalOptions, log: (s: string) => void, extraEnv: Record<string, string> = {}): Promise<BenchJson> {
  const env = { ...process.env, MIGSAFE_BENCH_RUNS: String(o.runs), MIGSAFE_BENCH_MODES: o.quick ? 'postcopy' : 'postcopy,precopy', ...extraEnv };
  const child = spawn(process.execPath, [join(ROOT, 'dist', 'bench', 'migration.js'), '--json'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    err += d;
    for (const l of d.split('\n')) if (l.trim()) log(`bench:migration: ${l}`);
  });
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  if (code !== 0) throw new Error(`bench:migration exited ${code}:\n${err.slice(-2000)}`);
  return JSON.parse(out.trim().split('\n').pop()!) as BenchJson;
}

/**
 * E2's (and E5's) --quick post-copy: 8 MiB/s (~11 s for the 128 MiB guest), not 32. RIC's first
 * round comes only after the destination loaded the final FIC image (5–9 s on these 2 cores
 * under load, eval E8), and a shorter post-copy left E5 without a RIC round to draw on. Only
 * here: E3's quick run at 8 MiB/s failed once (its agents keep the default 3 s lease and 1.5 s
 * heartbeat timeout, which E8 found too short on this machine while RIC loads its image).
 */
export function ricQuickEnv(o: EvalOptions): Record<string, string> {
  return o.quick ? { MIGSAFE_BENCH_BANDWIDTH: '8' } : {};
}

export function migrationRaw(j: BenchJson, id: string): Raw[] {
  const setting = { runs: j.runs, ricIntervalMs: j.ricIntervalMs ?? 500, bandwidthMiBs: j.bandwidthMiBs, qemu: j.qemu, load: j.load, memMiB: 128, workload: j.workload === 'qsort' ? 'qsort 1 MiB, unpaced' : 'wset 16 MiB @ 1000 writes/s' };
  return [
    ...j.samples.map((s) => ({ experiment: id, kind: 'migration', ...setting, ...s })),
    ...j.ricRounds.map((r) => ({ experiment: id, kind: 'ric-round', ...setting, ...r })),
    ...(j.guest ?? []).flatMap((g) => [
      ...g.series.map((x) => ({ experiment: id, kind: 'guest-progress', side: g.side, ...x })),
      ...g.windows.map((w, i) => ({ experiment: id, kind: 'window', side: g.side, migration: i, ...w })),
    ]),
  ];
}

export const E2: Experiment = {
  id: 'E2',
  title: 'FIC overhead on total migration time',
  paper: 'V-Recover Fig. 4 (post-copy, write-intensive: +1–4 %; idle +0.2–0.7 %)',
  command: 'npm run eval -- --only E2 --runs 5',
  async run(o, log) {
    return migrationRaw(await runMigrationBench(o, log, ricQuickEnv(o)), 'E2');
  },
  render(raw) {
    const mig = raw.filter((r) => r.kind === 'migration');
    const modes = [...new Set(mig.map((r) => r.mode as string))];
    const first = mig[0] ?? {};
    const rows = modes.map((mode) => {
      const t = (side: string) => mig.filter((r) => r.mode === mode && r.side === side).map((r) => r.totalMs as number);
      const d = (side: string) => mig.filter((r) => r.mode === mode && r.side === side).map((r) => r.downtimeMs as number);
      const over = (med(t('with')) / med(t('without')) - 1) * 100;
      const p = mode === 'postcopy' ? PAPER_E2.writeIntensivePostcopy : undefined;
      return [
        mode,
        spread(t('without')),
        spread(t('with')),
        `${over.toFixed(1)} %`,
        p ? `+${p.low}–${p.high} %` : '— (the paper measured post-copy only)',
        p ? `${(over / p.high).toFixed(2)}–${(over / p.low).toFixed(2)}` : '—',
        spread(d('without')),
        spread(d('with')),
        mode === 'postcopy' ? `${PAPER_E2.downtimeWithoutMs.low}–${PAPER_E2.downtimeWithoutMs.high} / ${PAPER_E2.downtimeWithMs.low}–${PAPER_E2.downtimeWithMs.high}` : '—',
      ];
    });
    return {
      setting:
        `${machine()}; QEMU ${first.qemu as string}; guest 128 MiB, the wset workload over 16 MiB at 1000 writes/s; migration bandwidth ${first.bandwidthMiBs as number} MiB/s; ` +
        `FIC/RIC side: agents with --interval 1000 --max-time 200 --fic-bandwidth 8, output commit on; the other side --no-checkpoint; ` +
        `${first.runs as number} migration(s) per mode and side, alternating, ping-pong between two hosts; total = QEMU's total-time. Load average ${(first.load as { before: string })?.before} before, ${(first.load as { after: string })?.after} after. ` +
        `The paper: 1–8 GB write-intensive VMs on KVM over 1 Gbit/s; the idle-VM and concurrent-migration variants (Fig. 7) are not run here.`,
      table: table(['mode', 'total without FIC ms', 'total with FIC/RIC ms', 'overhead (medians)', 'paper overhead', 'ours ÷ paper (range ends)', 'downtime without ms', 'downtime with ms', 'paper downtime without / with ms'], rows),
      figure: {
        title: { text: 'E2: total migration time with and without FIC/RIC', subtitle: 'guest 128 MiB, wset 16 MiB, TCG, 2 cores; each point one migration' },
        data: { values: mig.map((r) => ({ mode: r.mode, side: r.side === 'with' ? 'with FIC/RIC' : 'without (checkpointing off)', totalS: (r.totalMs as number) / 1000 })) },
        layer: [
          { mark: { type: 'point', filled: true, size: 60, opacity: 0.7 }, encoding: { x: { field: 'mode', type: 'nominal', title: 'migration mode' }, xOffset: { field: 'side', type: 'nominal' }, y: { field: 'totalS', type: 'quantitative', title: 'total migration time (s)' }, color: { field: 'side', type: 'nominal', title: 'series' } } },
          { mark: { type: 'tick', thickness: 2, size: 30 }, encoding: { x: { field: 'mode', type: 'nominal' }, xOffset: { field: 'side', type: 'nominal' }, y: { aggregate: 'median', field: 'totalS', type: 'quantitative' }, color: { field: 'side', type: 'nominal' } } },
        ],
      },
      notes: ['Ticks: medians; points: single migrations.'],
    };
  },
};
