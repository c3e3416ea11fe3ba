// The configuration file (`--config FILE`, TOML or JSON) and what every command's options are.
//
// Layout: top-level keys set an option for every command that has it; a table named after a
// command (`[agent]`, `[run]`, ...) sets options for that command only and wins over the top
// level. Keys are the long option names of `--help` (`max-pages`, not `maxPages`). A key no
// command has, a key the table's command does not have, a table that names no command, or a
// value of the wrong type is an error naming the file, the key and the fix: a typo in an
// operator's config must not be silently ignored.
//
// Precedence, as yargs applies it: command line > MIGSAFE_* environment > config file > defaults.
import { LOG_LEVELS, parseLogLevel } from '../util/logger.js';
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import yargs, { type Argv, type CommandModule } from 'yargs';
import { parse as parseToml } from 'smol-toml';

export type OptionType = 'string' | 'number' | 'boolean' | 'array';

export interface OptionSpec {
  type: OptionType;
  choices?: readonly unknown[];
  default?: unknown;
}

/** One command's options by long name. */
export type CommandOptions = ReadonlyMap<string, OptionSpec>;
/** Every command's options, by command name. */
export type Registry = ReadonlyMap<string, CommandOptions>;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyCommand = CommandModule<any, any>;

/** Options yargs adds itself, or that make no sense in a file. */
const NOT_IN_FILES = new Set(['help', 'config', 'show-hidden', '$0', '_']);

export function commandName(cmd: AnyCommand): string {
  const c = Array.isArray(cmd.command) ? cmd.command[0] : cmd.command;
  return String(c ?? '').split(' ')[0]!;
}

/** The options a command's builder defines (run on a throwaway parser, its handler never called). */
export function commandOptions(cmd: AnyCommand): CommandOptions {
  const name = commandName(cmd);
  const positionals = new Set(
    [...String(Array.isArray(cmd.command) ? cmd.command[0] : cmd.command).matchAll(/[<[]([^\]>.]+)/g)].map((m) => m[1]!),
  );
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  let got: any;
  yargs([name])
    .exitProcess(false)
    .version(false)
    .fail(() => {})
    .command({
      command: cmd.command ?? name,
      describe: false,
      builder: (y: Argv) => {
        const b = cmd.builder;
        const r = typeof b === 'function' ? (b(y) ?? y) : y.options(b ?? {});
        got = (r as unknown as { getOptions(): unknown }).getOptions();
        return r as Argv;
      },
      handler: () => {},
    })
    .parse();
  const out = new Map<string, OptionSpec>();
  if (!got) return out;
  const has = (list: string, k: string) => ((got[list] ?? []) as string[]).includes(k);
  for (const k of Object.keys(got.key ?? {})) {
    if (NOT_IN_FILES.has(k) || positionals.has(k)) continue;
    // yargs' own --version (off in migsafe); recover's --version is a number.
    if (k === 'version' && !has('number', k)) continue;
    const type: OptionType = has('array', k) ? 'array' : has('boolean', k) ? 'boolean' : has('number', k) ? 'number' : 'string';
    out.set(k, { type, choices: got.choices?.[k], default: got.default?.[k] });
  }
  return out;
}

export function buildRegistry(cmds: readonly AnyCommand[]): Registry {
  return new Map(cmds.map((c) => [commandName(c), commandOptions(c)]));
}

/** A config file, read and checked against every command's options. */
export interface ConfigFile {
  path: string;
  /** Top-level options. */
  common: Record<string, unknown>;
  /** Per-command tables. */
  tables: Record<string, Record<string, unknown>>;
}

export class ConfigError extends Error {}

function isTable(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

function describeType(v: unknown): string {
  if (Array.isArray(v)) return 'a list';
  if (v instanceof Date) return 'a date';
  if (isTable(v)) return 'a table';
  return `${typeof v} ${JSON.stringify(v)}`;
}

/** The closest known name (edit distance ≤ 3), for "did you mean". */
export function nearest(key: string, names: Iterable<string>): string | undefined {
  const k = key.toLowerCase().replace(/_/g, '-').replace(/([a-z])([A-Z])/g, '$1-$2');
  let best: string | undefined;
  let bestD = 4;
  for (const n of names) {
    const d = distance(k, n);
    if (d < bestD) [best, bestD] = [n, d];
  }
  return best;
}

function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length]!;
}

/** Checks one value against its option; returns an error text (without the file) or undefined. */
export function checkValue(spec: OptionSpec, v: unknown): string | undefined {
  const want =
    spec.type === 'array'
      ? Array.isArray(v) && v.every((x) => typeof x === 'string' || typeof x === 'number')
      : typeof v === spec.type && !(spec.type === 'number' && !Number.isFinite(v));
  if (!want) {
    const fix =
      spec.type === 'string'
        ? 'a quoted string'
        : spec.type === 'number'
          ? 'a number without quotes'
          : spec.type === 'boolean'
            ? 'true or false without quotes'
            : 'a list of strings';
    return `is ${describeType(v)}, but it takes ${fix}`;
  }
  if (spec.choices && !spec.choices.includes(v)) return `is ${JSON.stringify(v)}: choose one of ${spec.choices.map((c) => JSON.stringify(c)).join(', ')}`;
  return undefined;
}

function parseText(path: string, text: string): unknown {
  const ext = extname(path).toLowerCase();
  if (ext === '.json') {
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new ConfigError(`${path}: not valid JSON: ${(e as Error).message}`);
    }
  }
  if (ext !== '.toml') throw new ConfigError(`${path}: a config file must be .toml or .json (got "${ext || 'no extension'}"); rename it`);
  try {
    return parseToml(text);
  } catch (e) {
    const err = e as Error & { line?: number; column?: number };
    const what = err.message.split('\n')[0]!.replace(/^Invalid TOML document: /, '');
    throw new ConfigError(`${path}: not valid TOML: ${what}${err.line ? ` at line ${err.line}, column ${err.column}` : ''}; fix the file (https://toml.io)`);
  }
}

/** Reads and checks the whole file (every table, not only the running command's). */
export function readConfigFile(path: string, reg: Registry): ConfigFile {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read the config file ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}; give an existing file to --config`);
  }
  const doc = parseText(path, text);
  if (!isTable(doc)) throw new ConfigError(`${path}: the top level must be a table of options (got ${describeType(doc)})`);
  const everyOption = new Map<string, OptionSpec>();
  for (const opts of reg.values()) for (const [k, s] of opts) if (!everyOption.has(k)) everyOption.set(k, s);
  const file: ConfigFile = { path, common: {}, tables: {} };
  const unknown = (key: string, where: string, names: Iterable<string>, fix: string): ConfigError => {
    const near = nearest(key, names);
    return new ConfigError(`${path}: unknown key "${key}"${where}${near ? `: did you mean "${near}"?` : ''} ${fix}`);
  };
  for (const [key, v] of Object.entries(doc)) {
    if (isTable(v)) {
      const opts = reg.get(key);
      if (!opts) throw unknown(key, ' (a table)', reg.keys(), `— a table must name a command: ${[...reg.keys()].join(', ')}`);
      const t: Record<string, unknown> = {};
      for (const [k, tv] of Object.entries(v)) {
        const spec = opts.get(k);
        if (!spec) throw unknown(k, ` in [${key}]`, opts.keys(), `— see \`migsafe ${key} --help\` for its options, or remove the key`);
        const bad = checkValue(spec, tv);
        if (bad) throw new ConfigError(`${path}: [${key}] ${k} ${bad}`);
        t[k] = tv;
      }
      file.tables[key] = t;
      continue;
    }
    const spec = everyOption.get(key);
    if (!spec) throw unknown(key, ' at the top level', everyOption.keys(), '— no command has this option; see `migsafe <command> --help`, or remove the key');
    // An option of several commands has one type everywhere (checked by the unit tests).
    const bad = checkValue(spec, v);
    if (bad) throw new ConfigError(`${path}: ${key} ${bad}`);
    file.common[key] = v;
  }
  return file;
}

/** What the file sets for one command: its table over the top-level keys it has. */
export function configFor(file: ConfigFile, command: string, reg: Registry): Record<string, unknown> {
  const opts = reg.get(command) ?? new Map();
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(file.common)) if (opts.has(k)) out[k] = v;
  Object.assign(out, file.tables[command] ?? {});
  return out;
}

/**
 * Options of every command. An option common to all commands belongs HERE, not on the
 * top-level parser (`global: true`): only what a command's builder defines is known to the
 * config file check and to the environment scan (env.ts).
 */
export function withCommonOptions<T>(y: Argv<T>) {
  return y
    .option('state-dir', {
      type: 'string',
      describe: "persistent state (migsafe's own redis-server and its AOF); default ~/.local/state/migsafe",
    })
    .option('run-dir', { type: 'string', describe: 'guest RAM files and QMP sockets (tmpfs); default /dev/shm/migsafe-UID' })
    .option('log-level', {
      type: 'string',
      defaultDescription: 'info',
      describe: `least severe log lines written: ${LOG_LEVELS.join(', ')}`,
      coerce: (v: string) => parseLogLevel(String(v)),
    });
}

/**
 * The command with `--config FILE` (read by yargs through readConfigFile: the file's values sit
 * under the environment's and the command line's) and the options of every command.
 */
export function withConfigFile(cmd: AnyCommand, reg: () => Registry): AnyCommand {
  const name = commandName(cmd);
  const inner = cmd.builder;
  return {
    ...cmd,
    builder: (y: Argv) => {
      const b = typeof inner === 'function' ? (inner(y) ?? y) : y.options(inner ?? {});
      return withCommonOptions(b as Argv).config(
        'config',
        'read options from this TOML or JSON file (top-level keys: every command; [' + name + '] table: this one); ' +
          'command line and MIGSAFE_* variables win over it',
        (path: string) => configFor(readConfigFile(path, reg()), name, reg()),
      );
    },
  };
}
