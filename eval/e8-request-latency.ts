// E8 — V-Recover Fig. 13–15: latency and throughput of a network service in the guest while it
// is migrated post-copy, with event-based RIC (a round as soon as the guest sends a packet),
// continuous RIC (a round every --ric-interval) and plain post-copy without checkpointing.
// The measurement is bench/request-latency.ts: a UDP service in the guest (the serve workload),
// a client outside it timing every reply; output commit holds each reply until the round that
// explains it commits.
import { runRequestLatency, CASES, type Case } from '../bench/request-latency.js';
import { machine, med, NotMeasured, sorted, spread, table, type Experiment, type Raw } from './common.js';
import { PAPER_E8 } from './papers.js';

/** The settings of a run: quick keeps E8 under a minute, the full run measures a longer post-copy. */
export function e8Settings(quick: boolean, runs: number) {
  return quick
    ? { runs: 1, rate: 50, beforeMs: 1000, afterMs: 1500, bandwidthMiBs: 32, ricIntervalMs: 500, ficIntervalMs: 500, memMiB: 128, workloadMiB: 1 }
    : { runs, rate: 50, beforeMs: 5000, afterMs: 5000, bandwidthMiBs: 8, ricIntervalMs: 500, ficIntervalMs: 500, memMiB: 128, workloadMiB: 1 };
}

const ORDER: Case[] = ['event', 'continuous', 'none'];

function pct(xs: number[], p: number): number {
  const s = sorted(xs);
  return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))]! : NaN;
}

type Phase = 'before' | 'during' | 'ric' | 'after';

/** One case's requests in a phase of its migrations: latency percentiles, replies/s, lost. */
function phaseStats(raw: Raw[], c: Case, phase: Phase) {
  const mig = raw.filter((r) => r.kind === 'migration' && r.case === c);
  const rounds = raw.filter((r) => r.kind === 'ric-round' && r.case === c && typeof r.t === 'number');
  let lat: number[] = [];
  let sent = 0;
  let replies = 0;
  let spanMs = 0;
  for (const m of mig) {
    const i = m.migration as number;
    const end = m.windowMs as number;
    const firstRic = Math.min(...rounds.filter((r) => r.migration === i && (r.t as number) >= 0).map((r) => r.t as number));
    const [lo, hi] = phase === 'before' ? [-(m.beforeMs as number), 0] : phase === 'during' ? [0, end] : phase === 'ric' ? [firstRic, end] : [end, end + (m.afterMs as number)];
    if (!Number.isFinite(lo) || hi <= lo) continue;
    const reqs = raw.filter((r) => r.kind === 'request' && r.case === c && r.migration === i && (r.t as number) >= lo && (r.t as number) < hi);
    sent += reqs.length;
    lat = lat.concat(reqs.filter((r) => r.latencyMs !== null).map((r) => r.latencyMs as number));
    replies += raw.filter((r) => r.kind === 'reply' && r.case === c && r.migration === i && (r.t as number) >= lo && (r.t as number) < hi).length;
    spanMs += hi - lo;
  }
  return { p50: pct(lat, 0.5), p99: pct(lat, 0.99), perS: spanMs ? (replies * 1000) / spanMs : NaN, lost: sent ? ((sent - lat.length) / sent) * 100 : NaN, sent, spanMs };
}

/** The stored columns back to one record per request and per reply. */
function expand(stored: Raw[]): Raw[] {
  const out: Raw[] = [];
  for (const r of stored) {
    if (r.kind === 'requests') (r.t as number[]).forEach((t, i) => out.push({ experiment: 'E8', kind: 'request', case: r.case, migration: r.migration, t, latencyMs: (r.latencyMs as (number | null)[])[i] }));
    else if (r.kind === 'replies') for (const t of r.t as number[]) out.push({ experiment: 'E8', kind: 'reply', case: r.case, migration: r.migration, t });
    else out.push(r);
  }
  return out;
}

const f0 = (x: number) => (Number.isFinite(x) ? x.toFixed(0) : '—');
const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : '—');
const r2 = (a: number, b: number) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? (a / b).toFixed(2) : '—');

export const E8: Experiment = {
  id: 'E8',
  title: 'Event-based vs continuous RIC: request latency and throughput of a network service',
  paper: 'V-Recover Fig. 13–15 (event-based RIC: more consistent throughput and lower latency than continuous; no values stated)',
  command: 'npm run eval -- --only E8 --runs 3',
  async run(o, log) {
    const s = e8Settings(o.quick, o.runs);
    const r = await runRequestLatency({ ...s, cases: ORDER, log });
    const setting = { ...s, cases: ORDER };
    // Requests and replies as one record per case and migration, columns of numbers: ~50 a
    // second per case would be ~20 000 records of their own.
    const rec: Raw[] = [];
    for (const m of r.migrations) {
      const reqs = r.requests.filter((x) => x.case === m.case && x.migration === m.migration);
      const reps = r.replies.filter((x) => x.case === m.case && x.migration === m.migration);
      rec.push({ experiment: 'E8', kind: 'requests', case: m.case, migration: m.migration, t: reqs.map((x) => Math.round(x.t)), latencyMs: reqs.map((x) => (x.latencyMs === null ? null : Math.round(x.latencyMs * 10) / 10)) });
      rec.push({ experiment: 'E8', kind: 'replies', case: m.case, migration: m.migration, t: reps.map((x) => Math.round(x.t)) });
    }
    return [...r.migrations.map((m) => ({ experiment: 'E8', kind: 'migration', ...setting, ...m })), ...r.rounds.map((x) => ({ experiment: 'E8', kind: 'ric-round', ...x })), ...rec];
  },
  render(stored) {
    const raw = expand(stored);
    const mig = raw.filter((r) => r.kind === 'migration');
    if (!mig.length || !raw.some((r) => r.kind === 'request')) throw new NotMeasured('no migration with timed requests was stored');
    const first = mig[0]!;
    const cases = ORDER.filter((c) => mig.some((m) => m.case === c));
    const rows: string[][] = [];
    const stats = new Map<string, ReturnType<typeof phaseStats>>();
    for (const c of cases) {
      for (const ph of ['before', 'during', 'ric', 'after'] as Phase[]) {
        const s = phaseStats(raw, c, ph);
        stats.set(`${c}/${ph}`, s);
        if (ph === 'ric' && c === 'none') continue;
        const name = { before: 'before migration', during: 'during migration (migrate to its end)', ric: 'during migration, from the first RIC round', after: 'after migration' }[ph];
        rows.push([CASES[c].label, name, f0(s.p50), f0(s.p99), f1(s.perS), f1(s.lost), String(s.sent)]);
      }
    }
    const ev = (ph: Phase) => stats.get(`event/${ph}`);
    const co = (ph: Phase) => stats.get(`continuous/${ph}`);
    const cmp: string[][] = [];
    for (const ph of ['during', 'ric'] as Phase[]) {
      const e = ev(ph);
      const k = co(ph);
      if (!e || !k) continue;
      const where = ph === 'during' ? 'during migration' : 'from the first RIC round';
      cmp.push([`p50 latency ${where}`, '< 1 ("lower latency degradation", Fig. 14; "lower average response time", Fig. 15)', r2(e.p50, k.p50), '—']);
      cmp.push([`p99 latency ${where}`, '< 1 (Fig. 14, no value stated)', r2(e.p99, k.p99), '—']);
      cmp.push([`replies/s ${where}`, '≥ 1, "more consistent throughput" (Fig. 13, no value stated)', r2(e.perS, k.perS), '—']);
    }
    // The first RIC round after `migrate`, per migration: until it commits, the destination holds every reply.
    const firstRic = (c: Case) =>
      mig
        .filter((m) => m.case === c)
        .map((m) => Math.min(...raw.filter((r) => r.kind === 'ric-round' && r.case === c && r.migration === m.migration && typeof r.t === 'number' && (r.t as number) >= 0).map((r) => r.t as number)))
        .filter(Number.isFinite);
    const roundsDuring = (c: Case) => raw.filter((r) => r.kind === 'ric-round' && r.case === c && typeof r.t === 'number' && (r.t as number) >= 0 && (r.t as number) <= (mig.find((m) => m.case === c && m.migration === r.migration)?.windowMs as number)).length;
    // The figure: p50 and p99 per second of send time, replies per second of receive time.
    const fig: { tS: number; series: string; stat: string; latencyMs?: number; perS?: number }[] = [];
    for (const c of cases) {
      const n = mig.filter((m) => m.case === c).length;
      const byBin = new Map<number, number[]>();
      for (const r of raw) {
        if (r.kind !== 'request' || r.case !== c || r.latencyMs === null) continue;
        const b = Math.floor((r.t as number) / 1000);
        byBin.set(b, [...(byBin.get(b) ?? []), r.latencyMs as number]);
      }
      for (const [b, xs] of byBin) {
        fig.push({ tS: b + 0.5, series: CASES[c].label, stat: 'p50', latencyMs: Math.max(0.1, pct(xs, 0.5)) });
        fig.push({ tS: b + 0.5, series: CASES[c].label, stat: 'p99', latencyMs: Math.max(0.1, pct(xs, 0.99)) });
      }
      const replies = new Map<number, number>();
      for (const r of raw) if (r.kind === 'reply' && r.case === c) replies.set(Math.floor((r.t as number) / 1000), (replies.get(Math.floor((r.t as number) / 1000)) ?? 0) + 1);
      const bins = [...byBin.keys(), ...replies.keys()];
      for (let b = Math.min(...bins); b <= Math.max(...bins); b++) fig.push({ tS: b + 0.5, series: CASES[c].label, stat: 'replies', perS: (replies.get(b) ?? 0) / n });
    }
    const lat = fig.filter((x) => x.latencyMs !== undefined);
    const thr = fig.filter((x) => x.perS !== undefined);
    const windows = (c: Case) => mig.filter((m) => m.case === c).map((m) => m.windowMs as number);
    return {
      setting:
        `${machine()}; per case one cluster of three hosts (network namespaces) and one guest (${first.memMiB as number} MiB, the serve workload: a UDP service, each request one random write into a ${first.workloadMiB as number} MiB region and one reply), the three side by side, their migrations one at a time; ` +
        `a client on the store host sends ${first.rate as number} requests/s to both hosts (only the one running the VM passes them in: \`migsafe agent --gate-in\`) and times every reply. ` +
        `${first.runs as number} post-copy migration(s) per case at ${first.bandwidthMiBs as number} MiB/s (ping-pong), measured from ${(first.beforeMs as number) / 1000} s before each to ${(first.afterMs as number) / 1000} s after; ` +
        `RIC cases: FIC --interval ${first.ficIntervalMs as number} --max-time 200 before and after (output commit holds replies there too), RIC --ric-interval ${first.ricIntervalMs as number} with --ric-event or --no-ric-event; agents at --lease-ttl 30000 --hb-timeout 10000 (with the defaults 3000/1500, and with a 10 s lease, agents on these loaded cores fenced themselves or took the other side for dead while RIC loaded its first image or the first full FIC rounds went to the stores). ` +
        `The paper: ${PAPER_E8.setting}; its text gives no values for these figures, only the comparison, so the paper column is the direction of the event ÷ continuous ratio and no "ours ÷ paper" can be formed.`,
      table:
        table(['case', 'phase', 'p50 latency ms', 'p99 latency ms', 'replies/s', 'lost %', 'requests'], rows) +
        '\n\n' +
        table(['event-based ÷ continuous RIC', 'paper (direction)', 'ours', 'ours ÷ paper'], cmp),
      figure: {
        title: { text: 'E8: request latency and throughput during post-copy', subtitle: `UDP service in a ${first.memMiB as number} MiB guest, ${first.rate as number} req/s, ${first.bandwidthMiBs as number} MiB/s, TCG, 2 cores; 0 s = migrate; ${first.runs as number} migration(s) per case` },
        vconcat: [
          {
            width: 520,
            height: 220,
            data: { values: lat },
            mark: { type: 'line', point: true },
            encoding: {
              x: { field: 'tS', type: 'quantitative', title: 'time from migration start (s)' },
              y: { field: 'latencyMs', type: 'quantitative', title: 'reply latency (ms, log scale)', scale: { type: 'log' } },
              color: { field: 'series', type: 'nominal', title: 'case' },
              strokeDash: { field: 'stat', type: 'nominal', title: 'percentile' },
            },
          },
          {
            width: 520,
            height: 140,
            data: { values: thr },
            mark: { type: 'line', interpolate: 'step-after' },
            encoding: {
              x: { field: 'tS', type: 'quantitative', title: 'time from migration start (s)' },
              y: { field: 'perS', type: 'quantitative', title: 'replies received (1/s, mean per migration)' },
              color: { field: 'series', type: 'nominal', title: 'case' },
            },
          },
        ],
      } as never,
      notes: [
        `Migration (migrate to its end as the operator saw it): ${cases.map((c) => `${c} ${spread(windows(c))} ms`).join('; ')}. ` +
          `QEMU downtime: ${cases.map((c) => `${c} ${spread(mig.filter((m) => m.case === c).map((m) => m.downtimeMs as number))} ms`).join('; ')}.`,
        `First RIC round after migrate (ms): event ${spread(firstRic('event'))}, continuous ${spread(firstRic('continuous'))} — until it commits, every reply of the destination is held; RIC rounds within the migrations: event ${roundsDuring('event')}, continuous ${roundsDuring('continuous')}. Median of the event case's RIC pauses: ${f1(med(raw.filter((r) => r.kind === 'ric-round' && r.case === 'event').map((r) => r.pauseMs as number)))} ms.`,
        `Lost requests are not a RIC effect alone: post-copy without RIC loses ${f1(stats.get('none/during')?.lost ?? NaN)} % of those sent during its migrations. Most likely they are dropped on their way into a guest stalled by post-copy page faults (at ${first.bandwidthMiBs as number} MiB/s a faulted page waits behind the bulk pages already in the migration stream; QEMU's socket backend stops reading while the guest takes no packets, and its host socket's buffer overflows) — not traced per packet.`,
        'Latency: reply receive time − request send time at the client, per request; a request without a reply by the end of the run counts as lost, not in the percentiles. Replies/s count replies by when they arrived, so a phase that begins with a release of held replies can exceed the 50 requests/s sent. Figure: p50/p99 over the requests sent in each second (all migrations of a case together), replies by the second they arrived.',
      ],
    };
  },
};
