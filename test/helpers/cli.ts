// Running the real `migsafe` CLI as a child process, the way a user does.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';
import { waitFor } from '../../src/util/wait.js';

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli', 'main.js');

export interface CliRun {
  child: ChildProcess;
  out(): string;
  /** stderr as text: each JSON log line as `vm: msg` (see logText). */
  err(): string;
  /** stderr as written (JSON lines when it is a pipe). */
  rawErr(): string;
  /** Resolves with the exit code (or signal name). */
  exited: Promise<number | string>;
}

/**
 * The CLI's stderr as a person would read it: each complete JSON log line (stderr is a pipe in
 * tests) becomes `host: vm: msg`, other lines stay as they are; an unfinished last line is left
 * out, so that the text only grows at its end (offsets into it stay valid).
 */
export function logText(raw: string): string {
  const end = raw.lastIndexOf('\n');
  if (end < 0) return '';
  return raw
    .slice(0, end + 1)
    .split('\n')
    .slice(0, -1)
    .map((line) => {
      if (!line.startsWith('{')) return line;
      try {
        const o = JSON.parse(line) as Record<string, unknown>;
        if (typeof o.msg !== 'string') return line;
        return [o.host, o.vm, o.msg].filter((v) => typeof v === 'string' && v !== '').join(': ');
      } catch {
        return line;
      }
    })
    .map((l) => `${l}\n`)
    .join('');
}

/** The JSON log lines of a CLI's stderr, parsed (other lines skipped). */
export function logLines(raw: string): Record<string, unknown>[] {
  return raw.split('\n').flatMap((line) => {
    if (!line.startsWith('{')) return [];
    try {
      return [JSON.parse(line) as Record<string, unknown>];
    } catch {
      return [];
    }
  });
}

/** A private run directory (RAM files, QMP sockets) for the CLI, removed at teardown. */
export function cliEnv(t: Test): NodeJS.ProcessEnv {
  const run = mkdtempSync('/dev/shm/migsafe-test-run-');
  const state = mkdtempSync(join(tmpdir(), 'migsafe-test-state-'));
  t.teardown(() => {
    rmSync(run, { recursive: true, force: true });
    rmSync(state, { recursive: true, force: true });
  });
  return { ...process.env, MIGSAFE_RUN_DIR: run, MIGSAFE_STATE_DIR: state };
}

export function startCli(args: string[], env: NodeJS.ProcessEnv): CliRun {
  const child = spawn(process.execPath, [MAIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<number | string>((res) => child.once('exit', (c, s) => res(c ?? s ?? -1)));
  return { child, out: () => out, err: () => logText(err), rawErr: () => err, exited };
}

export interface OwnedCliRun extends CliRun {
  /** The pid in `--pidfile` (the QEMU the CLI started), once the file is there. */
  qemuPid(timeoutMs?: number): Promise<number>;
  /** Also killed at teardown (a QEMU a later recovery started); returns `pid`. */
  own(pid: number): number;
}

/**
 * The CLI started for a test that owns what it starts: at teardown the CLI, the QEMU named in
 * `pidfile` (if any) and every pid given to own() are killed, whatever the test got to.
 */
export function startOwnedCli(t: Test, args: string[], env: NodeJS.ProcessEnv, pidfile?: string): OwnedCliRun {
  const run = startCli(args, env);
  const owned: number[] = [];
  const fromFile = () => (pidfile && existsSync(pidfile) ? Number(readFileSync(pidfile, 'utf8')) || undefined : undefined);
  t.teardown(() => {
    killQuietly(run.child.pid);
    killQuietly(fromFile());
    for (const pid of owned) killQuietly(pid);
  });
  return {
    ...run,
    qemuPid: (timeoutMs = 30_000) => {
      if (!pidfile) throw new Error('startOwnedCli: no pidfile given');
      return waitFor(`the pidfile ${pidfile}`, timeoutMs, () => fromFile());
    },
    own: (pid) => (owned.push(pid), pid),
  };
}

/** Runs the CLI to its end. */
export async function runCli(args: string[], env: NodeJS.ProcessEnv, timeoutMs = 120_000) {
  const r = startCli(args, env);
  const timer = setTimeout(() => r.child.kill('SIGKILL'), timeoutMs);
  const code = await r.exited;
  clearTimeout(timer);
  return { code, stdout: r.out(), stderr: r.err(), rawStderr: r.rawErr() };
}

export function killQuietly(pid: number | undefined, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (!pid) return;
  try {
    process.kill(pid, signal);
  } catch {
    /* already gone */
  }
}

export { processAlive as alive } from '../../src/util/process.js';
