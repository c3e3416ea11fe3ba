// Entry point of `npm run bench:durability` (bench/durability.ts): the table, or --json.
import { formatTable, parseDurabilityArgs, runDurabilityBench, USAGE } from './durability.js';
import { note } from './stats.js';

try {
  const o = parseDurabilityArgs(process.argv.slice(2));
  if (o.help) {
    process.stdout.write(USAGE);
  } else {
    const r = await runDurabilityBench({ ...o, progress: (line) => note(`bench: ${line}`) });
    process.stdout.write(o.json ? JSON.stringify(r, null, 2) + '\n' : formatTable(r));
  }
} catch (e) {
  process.stderr.write(`bench:durability: ${(e as Error).message}\n`);
  process.exitCode = 1;
}
