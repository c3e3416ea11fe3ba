// Every verb of the CLI. Each file exports one yargs CommandModule.
import type { CommandModule } from 'yargs';
import { benchCommand } from './bench.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const commands: CommandModule<any, any>[] = [benchCommand];
