// src/cli/progress.ts off a terminal (as under tap: stderr is a pipe): no bar, log lines with
// the operation's figures, a line when its phase changes (a recovery's step, a migration going
// post-copy), and the migration's dirty rate in its periodic line.
import t from 'tap';
import { createLogger } from '../../src/util/logger.js';
import { Progress } from '../../src/cli/progress.js';
import { RECOVERY_STEPS } from '../../src/util/progress.js';

function capture() {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({ level: 'debug', destination: { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) } });
  return { lines, progress: new Progress(log.child({ vm: 'p1' })) };
}

t.test('a recovery: a line per step, with its phase, and one at the end', async (t) => {
  const { lines, progress } = capture();
  const total = RECOVERY_STEPS.length - 1;
  for (let done = 0; done <= total; done++) progress.report({ op: 'recovery', unit: 'steps', done, total, phase: RECOVERY_STEPS[done], version: 7 });
  const phases = lines.filter((l) => /^recovery: /.test(String(l.msg))).map((l) => l.phase);
  t.same(phases, RECOVERY_STEPS.slice(1), 'each step after the first is a line of its own (the first is in the start line)');
  t.match(lines[0], { level: 'debug', op: 'recovery', vm: 'p1', version: 7, phase: 'writing the RAM file', msg: /^recovery started: 3 steps/ });
  t.match(lines.at(-1), { level: 'debug', op: 'recovery', done: total, total, msg: /^recovery done: 3 of 3 in \d+ ms/ });
});

t.test('a migration: phase changes and the dirty rate', async (t) => {
  const { lines, progress } = capture();
  const mib = 2 ** 20;
  progress.report({ op: 'migration', unit: 'bytes', done: 0, total: 128 * mib, phase: 'active', dirtyRate: 800 });
  progress.report({ op: 'migration', unit: 'bytes', done: 64 * mib, total: 128 * mib, phase: 'active', dirtyRate: 900 });
  progress.report({ op: 'migration', unit: 'bytes', done: 100 * mib, total: 128 * mib, phase: 'postcopy-active', dirtyRate: 0 });
  t.equal(lines.filter((l) => l.op === 'migration').length, 2, 'the start and the turn to post-copy (the 5 s info line not yet due)');
  t.match(lines[1], { op: 'migration', phase: 'postcopy-active', dirtyRate: 0, done: 100 * mib, msg: 'migration: postcopy-active' });
  progress.report({ op: 'migration', unit: 'bytes', done: 128 * mib, total: 128 * mib, phase: 'completed', finished: true });
  t.match(lines.at(-1), { msg: /^migration done: 128\.0 MiB of 128\.0 MiB/ });
  t.notOk(lines.some((l) => /\[=+/.test(String(l.msg))), 'no bar in any line');
});
