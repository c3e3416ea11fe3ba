// Entry point of the diff benchmark: `migsafe bench diff` runs this file as a child process
// (src/cli/entry.ts), so the product never imports its benchmark. Flags are the CLI's, already
// checked there; they are parsed again here so that this file also runs on its own.
import { parseArgs } from 'node:util';
import { formatJson, formatTable, runDiffBench } from './diff.js';

const { values } = parseArgs({
  options: {
    corpus: { type: 'string', multiple: true },
    json: { type: 'boolean', default: false },
    repeats: { type: 'string', default: '7' },
    'sample-ms': { type: 'string', default: '40' },
  },
});

try {
  const results = await runDiffBench({
    files: values.corpus,
    repeats: Number(values.repeats),
    sampleMs: Number(values['sample-ms']),
    progress: (line) => process.stderr.write(`bench: ${line}\n`),
  });
  process.stdout.write(values.json ? formatJson(results) : formatTable(results));
} catch (e) {
  process.stderr.write(`migsafe: ${(e as Error).message}\n`);
  process.exitCode = 1;
}
