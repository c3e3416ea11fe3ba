#!/usr/bin/env node
// migsafe command line: one verb per file under commands/.
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { commands } from './commands/index.js';
import { LOG_LEVELS, parseLogLevel } from '../util/logger.js';
import { logger, setLogLevel } from './log.js';

/** The command's --vm, for the line that says why it failed (before `--`: QEMU's argv is not ours). */
function vmArg(): string | undefined {
  const args = hideBin(process.argv);
  const end = args.indexOf('--');
  const ours = end < 0 ? args : args.slice(0, end);
  const i = ours.indexOf('--vm');
  return i >= 0 ? ours[i + 1] : ours.find((a) => a.startsWith('--vm='))?.slice(5);
}

const cli = yargs(hideBin(process.argv))
  .scriptName('migsafe')
  .usage('$0 <command> [options]\n\nFault-tolerant checkpointing for live migration of QEMU/KVM virtual machines.')
  .epilogue(
    'Logs go to stderr: readable lines on a terminal, JSON lines (one object each, with vm/version fields) otherwise; ' +
      'MIGSAFE_LOG_FORMAT=json|pretty forces one. Passwords in URLs and password/token/key fields are redacted.',
  )
  .parserConfiguration({ "populate--": true })
  .option('log-level', {
    type: 'string',
    global: true,
    default: process.env.MIGSAFE_LOG_LEVEL ?? 'info',
    defaultDescription: 'MIGSAFE_LOG_LEVEL, else info',
    describe: `least severe log lines written: ${LOG_LEVELS.join(', ')}`,
    coerce: (v: string) => parseLogLevel(String(v), process.argv.some((a) => a.startsWith('--log-level')) ? '--log-level' : 'MIGSAFE_LOG_LEVEL'),
  })
  .middleware((a) => setLogLevel(a['log-level'] as ReturnType<typeof parseLogLevel>))
  .command(commands)
  .demandCommand(1, 'Name a command: see `migsafe --help`.')
  .strict()
  .help()
  .alias('h', 'help')
  // `--version N` is recover's option, so yargs' own --version is off.
  .version(false)
  .wrap(Math.min(110, process.stdout.columns ?? 110))
  .fail((msg, err) => {
    if (err) {
      // What a command failed on: a log line (JSON for machines), the stack only at debug level.
      const vm = vmArg();
      logger.fatal({ ...(vm ? { vm } : {}), ...(logger.isLevelEnabled('debug') || process.env.MIGSAFE_DEBUG ? { err } : {}) }, err.message);
      if (!logger.isLevelEnabled('fatal')) process.stderr.write(`migsafe: ${err.message}\n`);
    } else {
      process.stderr.write(`migsafe: ${msg}\nRun \`migsafe --help\` for usage.\n`);
    }
    process.exit(2);
  });

await cli.parseAsync();
