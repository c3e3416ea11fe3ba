// The CLI's root logger (src/util/logger.ts): pretty lines when stderr is a terminal, JSON lines
// otherwise (MIGSAFE_LOG_FORMAT=json|pretty forces one); the level is --log-level, else
// MIGSAFE_LOG_LEVEL, else info. Commands hand children of it ({vm}, {host}) to the layers below.
import { writeSync } from 'node:fs';
import { createLogger, parseLogFormat, parseLogLevel, type LogLevel, type Logger } from '../util/logger.js';

/** The level before the command line is read: MIGSAFE_LOG_LEVEL, else info (a bad value: info, and --log-level's check says so). */
export function envLogLevel(): LogLevel {
  try {
    return parseLogLevel(process.env.MIGSAFE_LOG_LEVEL ?? 'info', 'MIGSAFE_LOG_LEVEL');
  } catch {
    return 'info';
  }
}

function prettyWanted(): boolean {
  let f = 'auto';
  try {
    if (process.env.MIGSAFE_LOG_FORMAT) f = parseLogFormat(process.env.MIGSAFE_LOG_FORMAT);
  } catch (e) {
    process.stderr.write(`migsafe: ${(e as Error).message}\n`);
    process.exit(2);
  }
  return f === 'auto' ? process.stderr.isTTY === true : f === 'pretty';
}

/** Whether stderr is a person's terminal. */
export const onTerminal = process.stderr.isTTY === true;
const pretty = prettyWanted();
/** Progress bars: only for a person (a terminal with pretty lines); elsewhere progress goes in the log. */
export const barsWanted = onTerminal && pretty;

/** The progress bar on the terminal's last line, if one is shown: a log line goes above it. */
interface BarLine {
  clear(): void;
  redraw(): void;
}
let bar: BarLine | undefined;
export function setBarLine(b: BarLine | undefined): void {
  bar = b;
}

/** stderr, written synchronously (nothing lost at exit), below any bar shown. */
const stderrLines = {
  write(s: string): boolean {
    bar?.clear();
    writeSync(2, s);
    bar?.redraw();
    return true;
  },
};

export const logger: Logger = createLogger({
  level: envLogLevel(),
  pretty,
  colorize: onTerminal && !process.env.NO_COLOR,
  destination: pretty ? stderrLines : undefined,
});

/** Sets the level, for this process and the migsafe processes it starts (demo, bench). */
export function setLogLevel(level: LogLevel): void {
  logger.level = level;
  process.env.MIGSAFE_LOG_LEVEL = level;
}
