// The top-level parser: the verbs, MIGSAFE_* variables (env.ts) and --config files
// (config-file.ts). main.ts runs it; the agent's SIGHUP reload and the tests parse with it too,
// so that every path sees one precedence: command line > environment > config file > defaults.
import yargs, { type Argv, type CommandModule } from 'yargs';
import { commandName, commandOptions, nearest, type CommandOptions } from './config-file.js';
import { checkValues, scanArgv, UsageError } from './validate.js';
import { scanEnv, setAside } from './env.js';
import { logger, setLogLevel } from './log.js';
import { maskSecrets, type LogLevel } from '../util/logger.js';
import { hardenProcess, refuseSecretArgs } from './hardening.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyCommand = CommandModule<any, any>;

export interface ParserOptions {
  /** Failures: default print `migsafe: …` (usage errors) or log them, and exit 2; a function here gets them instead. */
  onFail?: (msg: string, err: Error | undefined, usage: boolean) => void;
}

const optionsCache = new WeakMap<AnyCommand, CommandOptions>();

/** The verb named on the command line (the first word that is not an option). */
function verbOf(args: readonly string[]): string | undefined {
  for (const a of args) {
    if (a === '--') return undefined;
    if (!a.startsWith('-')) return a;
  }
  return undefined;
}

export const PRECEDENCE_NOTE =
  'Every option can also be set by a MIGSAFE_<OPTION> environment variable (MIGSAFE_MAX_PAGES=64 is --max-pages 64) ' +
  'or in a --config file (TOML or JSON; `migsafe config check` shows what it sets). ' +
  'Precedence: command line > environment > config file > defaults.';

const LOGS_NOTE =
  'Logs go to stderr: readable lines on a terminal, JSON lines (one object each, with vm/version fields) otherwise; ' +
  'MIGSAFE_LOG_FORMAT=json|pretty forces one. Passwords in URLs and password/token/key fields are redacted.';

/** The command's --vm, for the line that says why it failed (before `--`: QEMU's argv is not ours). */
function vmArg(): string | undefined {
  const args = process.argv.slice(2);
  const end = args.indexOf('--');
  const ours = end < 0 ? args : args.slice(0, end);
  const i = ours.indexOf('--vm');
  return i >= 0 ? ours[i + 1] : ours.find((a) => a.startsWith('--vm='))?.slice(5);
}

/**
 * How a command that failed says so, exit status 2 either way: a usage error (a wrong option,
 * value or combination: nothing was done) as `migsafe: …` and where to look; a failure while it
 * ran as a log line (JSON for machines), the stack only at debug level.
 */
function defaultFail(msg: string, err: Error | undefined, usage: boolean, verb?: string): void {
  if (err && !usage) {
    const vm = vmArg();
    logger.fatal({ ...(vm ? { vm } : {}), ...(logger.isLevelEnabled('debug') || process.env.MIGSAFE_DEBUG ? { err } : {}) }, err.message);
    if (!logger.isLevelEnabled('fatal')) process.stderr.write(`migsafe: ${maskSecrets(err.message)}\n`);
  } else {
    process.stderr.write(`migsafe: ${maskSecrets(err?.message ?? msg)}\nRun \`migsafe ${verb ? `${verb} ` : ''}--help\` for usage.\n`);
  }
  process.exit(2);
}

/** yargs' own usage messages, said as ours: the thing, what it takes, where to look. */
export function usageMessage(msg: string, verb: string | undefined, commands: readonly AnyCommand[]): string {
  const names = commands.map(commandName);
  const cmd = commands.find((c) => commandName(c) === verb);
  const unknown = /^Unknown arguments?: (.+)$/s.exec(msg);
  if (unknown && !cmd) {
    const near = verb ? nearest(verb, names) : undefined;
    return verb
      ? `unknown command "${verb}"${near ? ` (did you mean ${near}?)` : ''}: the commands are ${names.join(', ')}`
      : `name a command before its options: migsafe <command> [options], one of ${names.join(', ')}`;
  }
  if (unknown) return `unexpected argument ${unknown[1]!.split(', ').map((w) => JSON.stringify(w)).join(', ')} for migsafe ${verb}: options start with --, and a QEMU command line goes after \`--\``;
  const missing = /^Missing required arguments?: (.+)$/.exec(msg);
  if (missing) return `migsafe ${verb} needs ${missing[1]!.split(', ').map((o) => `--${o}`).join(' and ')}: give ${missing[1]!.includes(',') ? 'them' : 'it'}`;
  const choices = [...msg.matchAll(/Argument: ([^,]+), Given: (.+?), Choices: (.+)$/gm)];
  if (choices.length) {
    const pos = cmd && String(cmd.command).includes(`<${choices[0]![1]}>`);
    return choices.map(([, o, g, c]) => `${pos ? `<${o}>` : `--${o}`} ${g}: choose one of ${c}`).join('; ');
  }
  if (/^Not enough non-option arguments/.test(msg) && cmd) return `migsafe ${verb} needs what to do: migsafe ${String(cmd.command)}`;
  return msg;
}

/**
 * The parser of `args` over `commands`. MIGSAFE_* variables that name no option of the verb
 * are set aside while yargs parses (see env.ts) and put back before the handler runs, or by
 * the returned `restore` (call it when the parse ended).
 */
export function cliParser(args: string[], commands: readonly AnyCommand[], o: ParserOptions = {}): { y: Argv; restore: () => void } {
  const verb = verbOf(args);
  const cmd = commands.find((c) => commandName(c) === verb);
  const fail = o.onFail ?? ((msg, err, usage) => defaultFail(msg, err, usage, cmd ? verb : undefined));
  let opts = cmd ? optionsCache.get(cmd) : undefined;
  if (cmd && !opts) optionsCache.set(cmd, (opts = commandOptions(cmd)));
  // Unknown options, missing values, repeated options: before yargs hides them (validate.ts).
  const raw = cmd ? scanArgv(args, verb!, opts!) : new Map<string, string>();
  /** The handler started: a failure from here on is not a usage error. */
  let started = false;
  let restore = () => {};
  const y = yargs(args)
    .scriptName('migsafe')
    .usage('$0 <command> [options]\n\nFault-tolerant checkpointing for live migration of QEMU/KVM virtual machines.')
    .epilogue(`${PRECEDENCE_NOTE}\n\n${LOGS_NOTE}`)
    .parserConfiguration({ 'populate--': true })
    .env('MIGSAFE')
    // A failure once a handler runs is the command's, not a usage error (the builders' checks
    // run after the top-level middleware, so only the handler tells).
    .command(commands.map((c) => ({ ...c, handler: (a: unknown) => ((started = true), c.handler(a as never)) })))
    .demandCommand(1, `name a command: migsafe <command> [options], one of ${commands.map(commandName).join(', ')}`)
    .strict()
    .help()
    .alias('h', 'help')
    // `--version N` is recover's option, so yargs' own --version is off.
    .version(false)
    .wrap(Math.min(110, process.stdout.columns ?? 110))
    .middleware((a) => {
      restore();
      // The directories' options reach context.ts (and the children of demo, bench) as before.
      if (typeof a['state-dir'] === 'string') process.env.MIGSAFE_STATE_DIR = a['state-dir'];
      if (typeof a['run-dir'] === 'string') process.env.MIGSAFE_RUN_DIR = a['run-dir'];
      if (typeof a['log-level'] === 'string') setLogLevel(a['log-level'] as LogLevel);

    })
    // Every value, whatever its source, by its option's rule (validate.ts): yargs would pass NaN on.
    .check((a) => {
      if (cmd) checkValues(verb!, opts!, a, raw);
      return true;
    }, true)
    .fail((msg, err) => {
      restore();
      const usage = !started || err instanceof UsageError;
      fail(err ? msg : usageMessage(msg, verb, commands), err, usage);
    });
  // A MIGSAFE_* variable of the verb's with a wrong value throws here, before yargs reads it.
  // MIGSAFE_CONFIG names the --config file of every verb that has one.
  restore = setAside(scanEnv(opts ?? new Map()).other.filter((v) => v !== 'MIGSAFE_CONFIG'));
  return { y, restore: () => restore() };
}

/** Runs the command line to its end (main.ts). */
export async function runCli(args: string[], commands: readonly AnyCommand[]): Promise<void> {
  let parser: ReturnType<typeof cliParser>;
  try {
    hardenProcess(args);
    refuseSecretArgs(args);
    parser = cliParser(args, commands);
  } catch (e) {
    const verb = verbOf(args);
    return defaultFail('', e as Error, true, commands.some((c) => commandName(c) === verb) ? verb : undefined);
  }
  const { y, restore } = parser;
  try {
    await y.parseAsync();
  } finally {
    restore();
  }
}

/**
 * Parses `args` for one command as the command line would (environment and config file
 * included) without running it: its arguments, or an Error saying what is wrong.
 */
export async function parseArgs(cmd: AnyCommand, args: string[]): Promise<Record<string, unknown>> {
  let got: Record<string, unknown> | undefined;
  let failed: Error | undefined;
  const c: AnyCommand = { ...cmd, handler: (a: Record<string, unknown>) => void (got = a) };
  const { y, restore } = cliParser(args, [c], {
    onFail: (msg, err, usage) => {
      failed ??= err ?? (usage ? new UsageError(msg) : new Error(msg));
    },
  });
  try {
    await y.exitProcess(false).parseAsync();
  } catch (e) {
    failed ??= e as Error;
  } finally {
    restore();
  }
  if (failed) throw failed;
  if (!got) throw new Error(`${args.join(' ')}: nothing parsed`);
  return got;
}
