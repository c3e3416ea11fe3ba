// Entry point of `npm run bench:recovery` (bench/recovery.ts): the table, or --json.
import { formatRecoveryTable, parseRecoveryArgs, runRecoveryBench, USAGE } from './recovery.js';

try {
  const o = parseRecoveryArgs(process.argv.slice(2));
  if (o.help) process.stdout.write(USAGE);
  else {
    const r = await runRecoveryBench(o);
    process.stdout.write(o.json ? JSON.stringify(r, null, 2) + '\n' : formatRecoveryTable(r));
  }
} catch (e) {
  process.stderr.write(`bench:recovery: ${(e as Error).message}\n`);
  process.exitCode = 1;
}
