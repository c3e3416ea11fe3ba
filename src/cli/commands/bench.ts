// `migsafe bench <what>`: micro-benchmarks. The work is bench/diff.ts, run as its own entry
// point (bench/diff-main.ts) so that the product does not depend on its benchmark.
import type { CommandModule } from 'yargs';
import { runEntry } from '../entry.js';

interface BenchArgs {
  what: 'diff';
  corpus?: string[];
  json: boolean;
  repeats: number;
  'sample-ms': number;
}

export const benchCommand: CommandModule<object, BenchArgs> = {
  command: 'bench <what>',
  describe: 'Run a benchmark (diff: the page-delta kernel on guest page pairs)',
  builder: (y) =>
    y
      .positional('what', { choices: ['diff'] as const, describe: 'what to measure', demandOption: true })
      .option('corpus', {
        type: 'string',
        array: true,
        describe: '.pairs files (8192-byte records: old page, new page); default: ../shared/corpus/*.pairs',
      })
      .option('json', { type: 'boolean', default: false, describe: 'one JSON object per corpus file' })
      .option('repeats', { type: 'number', default: 7, describe: 'samples per case (median reported)' })
      .option('sample-ms', { type: 'number', default: 40, describe: 'target duration of one sample' }) as never,
  handler: async (args) => {
    const flags = ['--repeats', String(args.repeats), '--sample-ms', String(args['sample-ms'])];
    for (const f of args.corpus ?? []) flags.push('--corpus', f);
    if (args.json) flags.push('--json');
    process.exitCode = await runEntry('bench/diff-main.js', flags);
  },
};
