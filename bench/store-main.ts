// Entry point of `npm run bench:store` (bench/store.ts): the table, or --json.
import { formatTable, parseStoreArgs, runStoreBench, USAGE } from './store.js';
import { note } from './stats.js';

try {
  const o = parseStoreArgs(process.argv.slice(2));
  if (o.help) {
    process.stdout.write(USAGE);
  } else {
    const r = await runStoreBench({ ...o, progress: (line) => note(`bench: ${line}`) });
    process.stdout.write(o.json ? JSON.stringify(r, null, 2) + '\n' : formatTable(r));
  }
} catch (e) {
  process.stderr.write(`bench:store: ${(e as Error).message}\n`);
  process.exitCode = 1;
}
