// Every verb of the CLI. Each file exports one yargs CommandModule; each gets --config,
// --state-dir and --run-dir here (config-file.ts), except `config` itself.
import type { CommandModule } from 'yargs';
import { agentCommand } from './agent.js';
import { migrateCommand } from './migrate.js';
import { demoMigrateCommand } from './demo-migrate.js';
import { attachCommand } from './attach.js';
import { benchCommand } from './bench.js';
import { deleteCommand } from './delete.js';
import { demoCommand } from './demo.js';
import { inspectCommand } from './inspect.js';
import { recoverCommand } from './recover.js';
import { runCommand } from './run.js';
import { sidecarCommand } from './sidecar.js';
import { configCommand } from './config.js';
import { doctorCommand } from './doctor.js';
import { statusCommand } from './status.js';
import { gcCommand } from './gc.js';
import { buildRegistry, withConfigFile, type Registry } from '../config-file.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
const verbs: CommandModule<any, any>[] = [
  runCommand,
  attachCommand,
  recoverCommand,
  inspectCommand,
  statusCommand,
  deleteCommand,
  gcCommand,
  sidecarCommand,
  benchCommand,
  demoCommand,
  agentCommand,
  migrateCommand,
  demoMigrateCommand,
  doctorCommand,
];

let reg: Registry | undefined;
/** Every verb's options (what a config file may set). */
export const registry = (): Registry => (reg ??= buildRegistry(configurable));

// eslint-disable-next-line @typescript-eslint/no-explicit-any
const configurable: CommandModule<any, any>[] = verbs.map((c) => withConfigFile(c, registry));

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const commands: CommandModule<any, any>[] = [...configurable, configCommand(registry)];
