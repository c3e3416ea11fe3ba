// MIGSAFE_* environment variables as options (yargs' `.env('MIGSAFE')`): MIGSAFE_MAX_PAGES=64
// is `--max-pages 64`, for every command that has --max-pages.
//
// yargs reads every MIGSAFE_* variable as an option, and under `.strict()` one that the running
// command lacks would fail the command (MIGSAFE_DEBUG, the test suite's MIGSAFE_QEMU_PREFIX, or
// MIGSAFE_INTERVAL set for `run` while `inspect` runs). So before parsing, the variables that
// name no option of the running command are set aside, and put back before its handler runs.
// The ones that do name an option are checked first: yargs would turn MIGSAFE_GATE=1 into false
// and MIGSAFE_INTERVAL=abc into NaN without a word.
import type { CommandOptions } from './config-file.js';

const PREFIX = 'MIGSAFE_';

/** The variable of an option: max-pages → MIGSAFE_MAX_PAGES. */
export function envName(option: string): string {
  return PREFIX + option.toUpperCase().replace(/-/g, '_');
}

/** The option of a MIGSAFE_* variable, if the command has it. */
function optionOf(variable: string, opts: CommandOptions): string | undefined {
  for (const k of opts.keys()) if (envName(k) === variable) return k;
  return undefined;
}

/** The value a variable gives its option, as yargs will read it; throws on a wrong type. */
export function envValue(variable: string, raw: string, option: string, opts: CommandOptions): unknown {
  const spec = opts.get(option)!;
  let v: unknown = raw;
  if (spec.type === 'number') v = raw.trim() === '' ? NaN : Number(raw);
  else if (spec.type === 'boolean') v = raw === 'true' ? true : raw === 'false' ? false : raw;
  else if (spec.type === 'array') v = raw.split(/\s+/).filter(Boolean);
  const fix =
    spec.type === 'number' && !Number.isFinite(v)
      ? 'takes a number'
      : spec.type === 'boolean' && typeof v !== 'boolean'
        ? 'takes true or false'
        : spec.choices && !spec.choices.includes(v)
          ? `takes one of ${spec.choices.join(', ')}`
          : undefined;
  if (fix) throw new Error(`environment variable ${variable}=${JSON.stringify(raw)}: --${option} ${fix}; fix or unset the variable`);
  return v;
}

export interface EnvScan {
  /** Variables that set an option of the command: option → [variable, value]. */
  used: Map<string, [string, unknown]>;
  /** MIGSAFE_* variables that name no option of the command. */
  other: string[];
}

export function scanEnv(opts: CommandOptions, env: NodeJS.ProcessEnv = process.env): EnvScan {
  const used = new Map<string, [string, unknown]>();
  const other: string[] = [];
  for (const [k, raw] of Object.entries(env)) {
    if (!k.startsWith(PREFIX) || raw === undefined) continue;
    const opt = optionOf(k, opts);
    if (opt === undefined) other.push(k);
    else used.set(opt, [k, envValue(k, raw, opt, opts)]);
  }
  return { used, other };
}

/** Sets `names` aside from process.env; the returned function puts them back (once). */
export function setAside(names: readonly string[]): () => void {
  const saved = names.map((n) => [n, process.env[n]] as const);
  for (const n of names) delete process.env[n];
  let done = false;
  return () => {
    if (done) return;
    done = true;
    for (const [n, v] of saved) if (v !== undefined && process.env[n] === undefined) process.env[n] = v;
  };
}
