// `migsafe demo-migrate`: a live migration that survives a killed source, on this machine with
// real processes (network namespaces as hosts; needs root). The demo itself is demo/migrate.ts.
import type { CommandModule } from 'yargs';
import { runEntry } from '../entry.js';

interface DemoMigrateArgs {
  mode: 'precopy' | 'postcopy';
  keep: boolean;
}

export const demoMigrateCommand: CommandModule<object, DemoMigrateArgs> = {
  command: 'demo-migrate',
  describe: 'Demo: migrate a real guest between two namespaced hosts, kill the source mid-migration, watch it recover',
  builder: (y) =>
    y
      .option('mode', { choices: ['precopy', 'postcopy'] as const, default: 'postcopy' as const })
      .option('keep', { type: 'boolean', default: false, describe: 'keep the logs directory' }) as never,
  handler: async (a) => {
    process.exitCode = await runEntry('demo/migrate.js', ['--mode', a.mode, ...(a.keep ? ['--keep'] : [])]);
  },
};
