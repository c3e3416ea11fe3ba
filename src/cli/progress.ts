// Progress of the long operations (src/util/progress.ts's reports): a cli-progress bar when a
// person watches (stderr a terminal, pretty logs); otherwise no bar at all but log lines with
// `op`, `done`, `total` and `unit` — debug when an operation starts and ends, info every few
// seconds while a long one runs — so that a pipe or a journal stays machine-readable.
import { createRequire } from 'node:module';
import type CliProgress from 'cli-progress';
import type { Logger } from '../util/logger.js';
import type { WorkProgress } from '../util/progress.js';
import { fmtBytes } from './context.js';
import { barsWanted, setBarLine } from './log.js';

// cli-progress is loaded when a bar is first shown (never when stderr is not a terminal).
const load = createRequire(import.meta.url);

const LABEL: Record<WorkProgress['op'], string> = {
  'full-checkpoint': 'full checkpoint',
  compaction: 'compaction',
  'read-checkpoint': 'reading checkpoint',
  recovery: 'recovery',
  migration: 'migration',
};

/** Seconds between two info lines of one operation on a non-terminal. */
const LOG_EVERY_MS = 5000;

function amount(n: number, unit: WorkProgress['unit']): string {
  return unit === 'bytes' ? fmtBytes(n) : `${n}`;
}

/** The one bar on the terminal (two operations at once: the second reports in the log only). */
let barOwner: Progress | undefined;

/** Turns one VM's (or one command's) progress reports into a bar or log lines. */
export class Progress {
  private bar?: CliProgress.SingleBar;
  private started = new Map<string, { at: number; lastLog: number; phase?: string }>();

  constructor(private readonly log: Logger) {}

  /** A listener for the layers below (Checkpointer's onProgress, loadVersion's, …). */
  readonly report = (p: WorkProgress): void => {
    const key = `${p.op}:${p.version ?? ''}`;
    const now = Date.now();
    const fields = {
      op: p.op,
      done: p.done,
      total: p.total,
      unit: p.unit,
      ...(p.version !== undefined ? { version: p.version } : {}),
      ...(p.phase !== undefined ? { phase: p.phase } : {}),
      ...(p.dirtyRate !== undefined ? { dirtyRate: p.dirtyRate } : {}),
    };
    let s = this.started.get(key);
    if (!s) {
      if (p.finished) return; // the end of one already reported as done
      s = { at: now, lastLog: now, phase: p.phase };
      this.started.set(key, s);
      this.log.debug(fields, `${LABEL[p.op]} started: ${amount(p.total, p.unit)} ${p.unit === 'bytes' ? '' : p.unit}`.trimEnd());
      if (barsWanted && !barOwner && !p.finished && p.total > 0) this.startBar(p);
    }
    if (this.bar && barOwner === this) {
      if (p.total !== this.bar.getTotal()) this.bar.setTotal(p.total);
      this.bar.update(p.done, { amount: this.amounts(p) });
    }
    if (p.phase !== s.phase) {
      // A new phase is news on a pipe too (a recovery's step, a migration turning post-copy).
      s.phase = p.phase;
      this.log.debug(fields, `${LABEL[p.op]}: ${p.phase}`);
    }
    const end = p.finished === true || (p.done >= p.total && p.op !== 'migration');
    if (end) {
      this.started.delete(key);
      this.stopBar(p);
      this.log.debug({ ...fields, ms: now - s.at }, `${LABEL[p.op]} done: ${amount(p.done, p.unit)} of ${amount(p.total, p.unit)} in ${now - s.at} ms`);
    } else if (!this.bar && now - s.lastLog >= LOG_EVERY_MS) {
      s.lastLog = now;
      this.log.info(fields, `${LABEL[p.op]}: ${amount(p.done, p.unit)} of ${amount(p.total, p.unit)}${this.detail(p)}`);
    }
  };

  private amounts(p: WorkProgress): string {
    const left = p.op === 'migration' ? `, ${amount(p.total - p.done, p.unit)} left` : '';
    return `${amount(p.done, p.unit)}/${amount(p.total, p.unit)}${p.unit === 'bytes' ? '' : ` ${p.unit}`}${left}${this.detail(p)}`;
  }

  /** " (postcopy-active, dirty 1200 pages/s)": the phase and the dirty rate, when reported. */
  private detail(p: WorkProgress): string {
    const parts = [p.phase, p.dirtyRate !== undefined ? `dirty ${Math.round(p.dirtyRate)} pages/s` : undefined].filter(Boolean);
    return parts.length ? ` (${parts.join(', ')})` : '';
  }

  private startBar(p: WorkProgress): void {
    const who = (this.log.bindings() as { vm?: string }).vm;
    const cliProgress = load('cli-progress') as typeof CliProgress;
    this.bar = new cliProgress.SingleBar(
      {
        format: `${who ? `${who}: ` : ''}${LABEL[p.op]} [{bar}] {percentage}% {amount} ETA {eta_formatted}`,
        stream: process.stderr,
        hideCursor: true,
        gracefulExit: false,
        clearOnComplete: false,
        forceRedraw: true,
        barsize: 30,
      },
      cliProgress.Presets.legacy,
    );
    barOwner = this;
    this.bar.start(p.total, p.done, { amount: this.amounts(p) });
    const bar = this.bar;
    setBarLine({ clear: () => process.stderr.write('\r\x1b[2K'), redraw: () => bar.render() });
  }

  private stopBar(p: WorkProgress): void {
    if (!this.bar || barOwner !== this) return;
    this.bar.update(p.done, { amount: this.amounts(p) });
    setBarLine(undefined);
    this.bar.stop();
    this.bar = undefined;
    barOwner = undefined;
  }

  /** Ends whatever is still shown (the command is ending). */
  close(): void {
    if (this.bar && barOwner === this) {
      setBarLine(undefined);
      this.bar.stop();
      this.bar = undefined;
      barOwner = undefined;
    }
  }
}
