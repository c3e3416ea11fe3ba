// Commands whose work lives outside the product (the diff benchmark in bench/, the migration
// demo in demo/, which builds its hosts with the test helpers) run it as a child process, so
// that src/ never imports bench/, demo/ or test/.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { constants } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** dist/ when running the compiled CLI (dist/src/cli/entry.js). */
const DIST = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Runs `node dist/<file> <args>` with this terminal; resolves with its exit status. */
export function runEntry(file: string, args: readonly string[]): Promise<number> {
  const path = join(DIST, file);
  if (!existsSync(path)) return Promise.reject(new Error(`${path} is missing: run \`npm run build\``));
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, [path, ...args], { stdio: 'inherit' });
    child.once('error', rej);
    child.once('exit', (code, sig) => res(code ?? 128 + (sig ? constants.signals[sig] : 0)));
  });
}
