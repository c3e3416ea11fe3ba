// Every verb of the CLI. Each file exports one yargs CommandModule.
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

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const commands: CommandModule<any, any>[] = [
  runCommand,
  attachCommand,
  recoverCommand,
  inspectCommand,
  deleteCommand,
  sidecarCommand,
  benchCommand,
  demoCommand,
  agentCommand,
  migrateCommand,
  demoMigrateCommand,
];
