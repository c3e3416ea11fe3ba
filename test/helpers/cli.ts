// Running the real `migsafe` CLI as a child process, the way a user does.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli', 'main.js');

export interface CliRun {
  child: ChildProcess;
  out(): string;
  err(): string;
  /** Resolves with the exit code (or signal name). */
  exited: Promise<number | string>;
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
  return { child, out: () => out, err: () => err, exited };
}

/** Runs the CLI to its end. */
export async function runCli(args: string[], env: NodeJS.ProcessEnv, timeoutMs = 120_000) {
  const r = startCli(args, env);
  const timer = setTimeout(() => r.child.kill('SIGKILL'), timeoutMs);
  const code = await r.exited;
  clearTimeout(timer);
  return { code, stdout: r.out(), stderr: r.err() };
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
