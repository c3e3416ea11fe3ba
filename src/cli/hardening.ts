// What every migsafe process does first (parser.ts runCli): files and directories it makes are
// its user's only (umask 077: RAM files, sockets, pidfiles, the AOF of its own Redis, and those
// of the QEMU it starts), and a password given on the command line stops showing in `ps` —
// /proc/PID/cmdline is rewritten (process.title overwrites the argv area) with it masked.
import { basename } from 'node:path';
import { maskSecrets } from '../util/logger.js';
import { SECRET_OPTIONS } from './redis-auth.js';

/** Refuses options whose value is a secret on the command line (before `--`). */
export function refuseSecretArgs(args: readonly string[]): void {
  for (const a of args) {
    if (a === '--') return;
    const name = SECRET_OPTIONS.find((o) => a === `--${o}` || a.startsWith(`--${o}=`));
    if (name) {
      throw new Error(
        `--${name} is refused on the command line, where \`ps\` shows it to every user: ` +
          `put the password in a file (--${name}-file FILE, mode 600) or in MIGSAFE_${name.toUpperCase().replace(/-/g, '_')}`,
      );
    }
  }
}

/** The command line with credentials masked, or undefined when it holds none. */
export function maskedCommandLine(args: readonly string[]): string | undefined {
  const masked = args.map(maskSecrets);
  if (masked.every((m, i) => m === args[i])) return undefined;
  return [basename(process.argv0 || 'node'), process.argv[1] ?? 'migsafe', ...masked].join(' ');
}

export function hardenProcess(args: readonly string[]): void {
  process.umask(0o077);
  const title = maskedCommandLine(args);
  // Only when something was masked: tools that read an untouched cmdline keep its argv form.
  if (title !== undefined) process.title = title;
}
