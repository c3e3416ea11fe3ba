#!/usr/bin/env node
// migsafe command line: one verb per file under commands/.
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { commands } from './commands/index.js';

const cli = yargs(hideBin(process.argv))
  .scriptName('migsafe')
  .usage('$0 <command> [options]\n\nFault-tolerant checkpointing for live migration of QEMU/KVM virtual machines.')
  .parserConfiguration({ "populate--": true })
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
      process.stderr.write(`migsafe: ${err.message}\n`);
      if (process.env.MIGSAFE_DEBUG) process.stderr.write(`${err.stack}\n`);
    } else {
      process.stderr.write(`migsafe: ${msg}\nRun \`migsafe --help\` for usage.\n`);
    }
    process.exit(2);
  });

await cli.parseAsync();
