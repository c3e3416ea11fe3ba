// Entry point of `npm run eval` (eval/main.ts).
import { parseEvalArgs, runEval, USAGE } from './main.js';

try {
  const o = parseEvalArgs(process.argv.slice(2));
  if (o.help) process.stdout.write(USAGE);
  else {
    const r = await runEval(o);
    process.stdout.write(`${r.report}\n`);
    if (r.failed.length) {
      process.stderr.write(`eval: not produced: ${r.failed.join(', ')}\n`);
      process.exitCode = 1;
    }
  }
} catch (e) {
  process.stderr.write(`eval: ${(e as Error).message}\n`);
  process.exitCode = 1;
}
