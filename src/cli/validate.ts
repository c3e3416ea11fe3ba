// Every option's value, checked in one place, for every command that has the option, wherever
// the value comes from (command line, MIGSAFE_* variable, config file): the parser (parser.ts)
// runs scanArgv before yargs and checkValues as its last check. An option's meaning is the same
// in every command (--interval is ms between rounds in run and in agent), so its rule is keyed
// by its name; a number option without a rule is a unit-test failure (test/unit/cli-bad-input).
// What involves several options (--qmp with --ram, --listen without TLS) stays with the options
// it joins, in the builders; yargs' own messages are rewritten in parser.ts (usageMessage).
import { accessSync, constants, readFileSync, statSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import type { CommandOptions, OptionSpec } from './config-file.js';
import { nearest } from './config-file.js';
import { envName } from './env.js';
import { parseCodec } from '../store/frame.js';
import { checkVmId } from '../store/keys.js';
import { parseDurability } from '../store/durability.js';
import { parseRedisTarget } from '../store/redis-url.js';
import { parseListen } from '../util/metrics.js';
import { parseAddr } from '../ha/peer.js';
import { parseVmList } from './vm-list.js';

/** A mistake in what the command was given: `migsafe: …` and exit status 2, no log line, no stack. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** Node's timers take at most this many ms (a longer one fires at once): the bound of every duration. */
export const MAX_MS = 2 ** 31 - 1;
const MAX_INT32 = 2 ** 31 - 1;

interface NumberRule {
  min: number;
  max: number;
  /** Whole numbers only (every rule but bandwidths). */
  int?: boolean;
  /** What the number counts, for the message: "ms", "MiB/s", "pages". */
  unit?: string;
}

type TextRule = (value: string, verb: string) => void;

/** The bounds of every number option, by name. */
export const NUMBER_RULES: Record<string, NumberRule> = {
  interval: { min: 10, max: MAX_MS, int: true, unit: 'ms' },
  'max-pages': { min: 0, max: MAX_INT32, int: true, unit: 'pages' },
  'max-time': { min: 0, max: MAX_MS, int: true, unit: 'ms' },
  threads: { min: 1, max: 256, int: true, unit: 'threads' },
  'lease-ttl': { min: 500, max: MAX_MS, int: true, unit: 'ms' },
  'compact-every': { min: 0, max: 1_000_000, int: true, unit: 'versions' },
  'fic-bandwidth': { min: 0, max: 1_048_576, unit: 'MiB/s' },
  'ric-interval': { min: 10, max: MAX_MS, int: true, unit: 'ms' },
  'ric-dirty-pages': { min: 0, max: MAX_INT32, int: true, unit: 'pages' },
  'hb-interval': { min: 10, max: MAX_MS, int: true, unit: 'ms' },
  'hb-timeout': { min: 20, max: MAX_MS, int: true, unit: 'ms' },
  version: { min: 1, max: Number.MAX_SAFE_INTEGER, int: true },
  pid: { min: 1, max: 4_194_304, int: true },
  repeats: { min: 1, max: 1000, int: true, unit: 'samples' },
  'sample-ms': { min: 1, max: 60_000, int: true, unit: 'ms' },
  versions: { min: 1, max: 50, int: true, unit: 'versions' },
  bandwidth: { min: 0, max: 1_048_576, int: true, unit: 'MiB/s' },
  'postcopy-bandwidth': { min: 0, max: 1_048_576, int: true, unit: 'MiB/s' },
  'postcopy-after': { min: 0, max: MAX_MS, int: true, unit: 'ms' },
};

function fileError(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? (e as Error).message;
}

/** A file the command reads: it exists, is a file, and can be read. */
function readableFile(path: string, what: string): void {
  let st;
  try {
    st = statSync(path);
    if (st.isFile()) return accessSync(path, constants.R_OK);
  } catch (e) {
    throw new Error(`cannot read it (${fileError(e)}): give ${what}`);
  }
  throw new Error(`not a file (a ${st.isDirectory() ? 'directory' : 'special file'}): give ${what}`);
}

/** A file the command writes: its directory exists. */
function writablePath(path: string): void {
  const dir = dirname(path);
  let st;
  try {
    st = statSync(dir);
  } catch (e) {
    throw new Error(`its directory ${dir} cannot be used (${fileError(e)}): create it, or give a path in an existing directory`);
  }
  if (!st.isDirectory()) throw new Error(`${dir} is not a directory: give a path in an existing directory`);
  let isDir = false;
  try {
    isDir = statSync(path).isDirectory();
  } catch {
    /* not there yet: it is written */
  }
  if (isDir) throw new Error('is a directory: give a file path');
}

/** A unix socket that must be there already (a running QEMU's). */
function socketPath(path: string, whose: string): void {
  let st;
  try {
    st = statSync(path);
  } catch (e) {
    throw new Error(`no such socket (${fileError(e)}): give the path of ${whose}`);
  }
  if (!st.isSocket()) throw new Error(`not a unix socket: give the path of ${whose}`);
}

/** An executable: a path, or a name on PATH. */
function executable(bin: string): void {
  const tries = bin.includes('/') ? [bin] : (process.env.PATH ?? '').split(delimiter).filter(Boolean).map((d) => join(d, bin));
  for (const p of tries) {
    try {
      if (statSync(p).isFile()) {
        accessSync(p, constants.X_OK);
        return;
      }
    } catch {
      /* the next one */
    }
  }
  throw new Error(bin.includes('/') ? 'not an executable file: give the path of a QEMU binary' : 'not found on PATH: give a QEMU binary on PATH or its path');
}

const HOST_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** The format of every string option that has one, by name; `doctor` reports a missing QEMU itself. */
/** `files`: the rule looks at this machine's files (not checked by `config check`, which may run elsewhere or before they exist). */
export const TEXT_RULES: Record<string, { check: TextRule; except?: string[]; files?: true }> = {
  vm: { check: (v) => void checkVmId(v) },
  host: {
    check: (v) => {
      if (!HOST_NAME.test(v)) throw new Error("use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (it names this host's leases)");
    },
  },
  redis: { check: (v) => void parseRedisTarget(v) },
  durability: { check: (v) => void parseDurability(v) },
  codec: { check: (v) => void parseCodec(v) },
  metrics: { check: (v) => void parseListen(v) },
  listen: { check: (v) => void parseAddr(v) },
  to: { check: (v) => void parseAddr(v) },
  from: { check: (v) => void parseAddr(v) },
  vms: {
    check: (v) => {
      readableFile(v, 'a JSON file of the VMs to start');
      parseVmList(readFileSync(v, 'utf8'), v);
    },
    files: true,
  },
  pidfile: { check: writablePath, files: true },
  'status-file': { check: writablePath, files: true },
  qmp: { check: (v) => socketPath(v, "the QEMU's QMP socket (-qmp unix:PATH,server)"), files: true },
  ft: { check: (v) => socketPath(v, "the patched QEMU's migsafe-ft socket"), files: true },
  ram: { check: (v) => readableFile(v, "the guest RAM file (the mem-path of QEMU's memory-backend-file)"), files: true },
  corpus: { check: (v) => readableFile(v, 'a .pairs file'), files: true },
  'qemu-binary': { check: executable, except: ['doctor'], files: true },
  'gate-in': { check: (v) => void parseGateIn(v) },
};

/** An error message, led by the option (`--codec x: …`) unless the message already names it. */
function named(option: string, shown: string, msg: string): string {
  return msg.startsWith(`--${option}`) || msg.includes(`--${option} `) ? msg : `--${option} ${shown}: ${msg}`;
}

function describeNumber(r: NumberRule): string {
  const top = r.max === Number.MAX_SAFE_INTEGER ? `${r.min} or more` : `from ${r.min} to ${r.max}`;
  return `${r.int ? 'a whole number' : 'a number'} ${top}${r.unit ? ` (${r.unit})` : ''}`;
}

/** What the command line gives each option (scanArgv), for the messages. */
export type RawArgs = ReadonlyMap<string, string>;

/** Where a value came from, for the message: nothing (the command line, or another option), a variable, the config file. */
function source(option: string, raw: RawArgs): string {
  if (raw.has(option)) return '';
  const v = envName(option);
  if (process.env[v] !== undefined) return ` (from ${v})`;
  return raw.has('config') || process.env.MIGSAFE_CONFIG !== undefined ? ' (from the config file)' : '';
}

/** Checks every value the parse gave (a yargs check): the first wrong one is a UsageError. */
export function checkValues(verb: string, opts: CommandOptions, a: Record<string, unknown>, raw: RawArgs, files = true): void {
  for (const [name, spec] of opts) {
    const v = a[name];
    if (v === undefined) continue;
    const from = source(name, raw);
    if (Array.isArray(v) && spec.type !== 'array') {
      throw new UsageError(`--${name} is given ${v.length} times${from}: give it once`);
    }
    const num = NUMBER_RULES[name];
    if (spec.type === 'number' && num) {
      const n = v as number;
      const shown = raw.get(name) ?? String(v);
      if (typeof n !== 'number' || !Number.isFinite(n) || (num.int && !Number.isInteger(n)) || n < num.min || n > num.max) {
        throw new UsageError(`--${name} ${shown}${from}: give ${describeNumber(num)}, e.g. --${name} ${spec.default ?? num.min}`);
      }
    }
    const text = TEXT_RULES[name];
    if (text && !text.except?.includes(verb) && (files || !text.files) && (spec.type === 'string' || spec.type === 'array')) {
      for (const s of (Array.isArray(v) ? v : [v]).map(String)) {
        try {
          text.check(s, verb);
        } catch (e) {
          throw new UsageError(named(name, `${s}${from}`, (e as Error).message));
        }
      }
    }
  }
}

function kebab(name: string): string {
  return name.replace(/([a-z0-9])([A-Z])/g, '$1-$2').toLowerCase();
}

/** Options every command takes besides its own (config-file.ts leaves them out of CommandOptions). */
const ALWAYS: ReadonlyMap<string, OptionSpec> = new Map([
  ['help', { type: 'boolean' }],
  ['config', { type: 'string' }],
]);

/**
 * The command line before `--`, option by option, before yargs reads it (yargs takes a value
 * option with no value as "" or its default, `--json=maybe` as false, and an option given twice
 * as a list): an unknown option, one without its value, a flag given a value, an option given
 * twice are UsageErrors. Returns what the command line gives each option.
 */
export function scanArgv(args: readonly string[], verb: string, opts: CommandOptions): Map<string, string> {
  const raw = new Map<string, string>();
  const end = args.indexOf('--');
  const ours = end < 0 ? args : args.slice(0, end);
  for (let i = 0; i < ours.length; i++) {
    const arg = ours[i]!;
    if (arg === '-h' || !arg.startsWith('-') || /^-\d/.test(arg)) continue; // the verb, positionals: yargs'
    if (!arg.startsWith('--')) throw new UsageError(`unknown option ${arg} for migsafe ${verb}: its options are long ones (--name)`);
    const eq = arg.indexOf('=');
    const given = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    let name = kebab(given);
    let spec = opts.get(name) ?? ALWAYS.get(name);
    let negated = false;
    if (!spec && name.startsWith('no-') && opts.get(name.slice(3))?.type === 'boolean') {
      name = name.slice(3);
      spec = opts.get(name);
      negated = true;
    }
    if (!spec) {
      const near = nearest(name, [...opts.keys(), 'help', 'config']);
      throw new UsageError(`unknown option --${given} for migsafe ${verb}${near ? `: did you mean --${near}?` : ''}`);
    }
    let value = eq < 0 ? undefined : arg.slice(eq + 1);
    if (spec.type === 'boolean') {
      if (value !== undefined && (negated || !['true', 'false'].includes(value))) {
        throw new UsageError(`--${given} is a flag: give --${name} or --no-${name}, without a value (got ${JSON.stringify(value)})`);
      }
      continue;
    }
    if (value === undefined) {
      const next = ours[i + 1];
      if (next === undefined || next === '-h' || (next.startsWith('--') && !/^--?\d/.test(next))) {
        const form = end >= 0 && i === ours.length - 1 ? ` (the \`--\` after it starts the QEMU command line)` : '';
        throw new UsageError(`--${name} needs a value${form}: give --${name} ${placeholder(name, spec)}`);
      }
      value = next;
      i++;
    }
    if (value === '') throw new UsageError(`--${name} is empty: give --${name} ${placeholder(name, spec)}, or leave the option out`);
    if (raw.has(name) && spec.type !== 'array') {
      throw new UsageError(`--${name} is given twice (${JSON.stringify(raw.get(name))} and ${JSON.stringify(value)}): give it once`);
    }
    raw.set(name, value);
  }
  return raw;
}

function placeholder(name: string, spec: OptionSpec): string {
  if (spec.choices) return spec.choices.join('|');
  const n = NUMBER_RULES[name];
  if (spec.type === 'number') return n ? `N (${describeNumber(n)})` : 'N';
  return name === 'vm' ? 'ID' : name.endsWith('file') || name === 'config' || name === 'pidfile' ? 'FILE' : 'VALUE';
}

/** `--gate-in GUEST_IP:PORT`. */
export function parseGateIn(v: string): { guestIp: string; port: number } {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})$/.exec(v);
  const port = Number(m?.[2]);
  if (!m || m[1]!.split('.').some((x) => Number(x) > 255) || port < 1 || port > 65535) throw new Error(`give the guest's IPv4 address and a UDP port, e.g. 192.168.77.2:7007`);
  return { guestIp: m[1]!, port };
}
