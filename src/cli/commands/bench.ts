// `migsafe bench <what>`: micro-benchmarks.
import type { CommandModule } from 'yargs';

export const benchCommand: CommandModule = {
  command: 'bench <what>',
  describe: 'Run a benchmark (diff)',
  builder: (y) => y.positional('what', { choices: ['diff'] as const, describe: 'what to measure' }),
  handler: () => {
    throw new Error('bench: not built yet');
  },
};
