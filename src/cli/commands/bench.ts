// `migsafe bench <what>`: micro-benchmarks. A thin layer over bench/diff.ts.
import type { CommandModule } from 'yargs';
import { formatJson, formatTable, runDiffBench } from '../../../bench/diff.js';

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
    const results = await runDiffBench({
      files: args.corpus,
      repeats: args.repeats,
      sampleMs: args['sample-ms'],
      progress: (line) => process.stderr.write(`bench: ${line}\n`),
    });
    process.stdout.write(args.json ? formatJson(results) : formatTable(results));
  },
};
