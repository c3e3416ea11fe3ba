// `migsafe config check [--config FILE] [--command NAME] [--json]`: checks a config file the way
// every command reads it (config-file.ts) and shows what each command would run with, and where
// each value comes from: MIGSAFE_* environment, the file (its top level or the command's table),
// or the default. The command line of the command itself would win over all of them.
import type { CommandModule } from 'yargs';
import { configFor, readConfigFile, type ConfigFile, type Registry } from '../config-file.js';
import { envName, scanEnv } from '../env.js';
import { checkValues } from '../validate.js';

interface ConfigArgs {
  action: 'check';
  config?: string;
  command?: string;
  json: boolean;
}

export interface Setting {
  value: unknown;
  /** `env MIGSAFE_X`, `config FILE [table]`, `config FILE`, `default`, or `unset`. */
  from: string;
}

/** What `command` gets from the environment, the file and its defaults (no command line). */
export function effective(reg: Registry, command: string, file: ConfigFile | undefined, env: NodeJS.ProcessEnv = process.env): Record<string, Setting> {
  const opts = reg.get(command);
  if (!opts) throw new Error(`unknown command "${command}" for --command: one of ${[...reg.keys()].join(', ')}`);
  const fromEnv = scanEnv(opts, env).used;
  const fromFile = file ? configFor(file, command, reg) : {};
  const out: Record<string, Setting> = {};
  for (const [k, spec] of [...opts].sort(([a], [b]) => a.localeCompare(b))) {
    const e = fromEnv.get(k);
    if (e) out[k] = { value: e[1], from: `env ${e[0]}` };
    else if (k in fromFile) out[k] = { value: fromFile[k], from: `config ${file!.path}${file!.tables[command] && k in file!.tables[command]! ? ` [${command}]` : ''}` };
    else if (spec.default !== undefined) out[k] = { value: spec.default, from: 'default' };
    else out[k] = { value: undefined, from: 'unset' };
  }
  return out;
}

function show(v: unknown): string {
  return v === undefined ? '-' : JSON.stringify(v);
}

export function configCommand(registry: () => Registry): CommandModule<object, ConfigArgs> {
  return {
    command: 'config <action>',
    describe: 'Check a config file (check): every key known and well typed; show what each command gets, and from where',
    builder: (y) =>
      y
        .positional('action', { choices: ['check'] as const, describe: 'check: validate the file and show the effective configuration' })
        .option('config', { type: 'string', describe: 'the TOML or JSON file to check (default: $MIGSAFE_CONFIG; none: environment and defaults only)' })
        .option('command', { type: 'string', describe: 'show every option of this command (default: only what the file or environment sets, for each command)' })
        .option('json', { type: 'boolean', default: false, describe: 'print JSON' })
        .check((a) => {
          const reg = registry();
          if (a.command !== undefined && !reg.has(String(a.command))) {
            throw new Error(`--command ${a.command}: no such command; one of ${[...reg.keys()].join(', ')}`);
          }
          // The file's mistakes are usage errors too (the handler reads it again to show it),
          // and so is a value each command would refuse (validate.ts: bounds and formats; not
          // files, which may not exist where and when the file is checked).
          const file = a.config !== undefined ? readConfigFile(String(a.config), reg) : undefined;
          for (const [n, opts] of reg) {
            const values = Object.fromEntries(Object.entries(effective(reg, n, file)).map(([k, v]) => [k, v.value]));
            checkValues(n, opts, values, new Map(a.config !== undefined ? [['config', String(a.config)]] : []), false);
          }
          return true;
        })
        .example('$0 config check --config /etc/migsafe/host-a.toml --command agent', '') as never,
    handler: async (a) => {
      const reg = registry();
      const file = a.config !== undefined ? readConfigFile(a.config, reg) : undefined;
      const names = a.command !== undefined ? [a.command] : [...reg.keys()];
      const commands: Record<string, Record<string, Setting>> = {};
      for (const n of names) {
        const all = effective(reg, n, file);
        const set = Object.entries(all).filter(([, s]) => a.command !== undefined || (s.from !== 'default' && s.from !== 'unset'));
        if (set.length) commands[n] = Object.fromEntries(set);
      }
      const everyVar = new Set([...reg.values()].flatMap((o) => [...o.keys()].map(envName)));
      everyVar.add('MIGSAFE_CONFIG');
      const notOptions = Object.keys(process.env)
        .filter((k) => k.startsWith('MIGSAFE_') && !everyVar.has(k))
        .sort();
      if (a.json) {
        process.stdout.write(`${JSON.stringify({ ok: true, file: file?.path ?? null, commands, notOptions }, null, 1)}\n`);
        return;
      }
      const lines = [file ? `${file.path}: OK (every key is an option, every value has its type)` : 'no config file: environment and defaults only'];
      if (!Object.keys(commands).length) lines.push('nothing set by the file or the environment: every command runs with its defaults');
      for (const [n, settings] of Object.entries(commands)) {
        lines.push('', `${n}:`);
        const w = Math.max(...Object.keys(settings).map((k) => k.length));
        for (const [k, s] of Object.entries(settings)) lines.push(`  ${k.padEnd(w)}  ${show(s.value).padEnd(24)}  ${s.from}`);
      }
      if (notOptions.length) lines.push('', `MIGSAFE_* variables that are not options (left alone): ${notOptions.join(', ')}`);
      lines.push('', 'The command line of a command wins over all of these.');
      process.stdout.write(`${lines.join('\n')}\n`);
    },
  };
}
