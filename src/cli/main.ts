#!/usr/bin/env node
// migsafe command line: one verb per file under commands/; the parser (environment, config
// file, precedence) is parser.ts.
import { hideBin } from 'yargs/helpers';
import { commands } from './commands/index.js';
import { runCli } from './parser.js';

await runCli(hideBin(process.argv), commands);
