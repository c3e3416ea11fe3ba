// Structured logs (pino): JSON lines for machines, or pino-pretty's lines for a person at a
// terminal. Every layer logs through a Logger it is handed (a child carrying `vm`, `host` or
// `version`), never through a global; secrets never reach the output: fields are redacted by
// pino's `redact`, and passwords inside URLs in a message are masked before it is written.
import pino, { type DestinationStream, type LevelWithSilent, type Logger } from 'pino';
import { writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import type PinoPretty from 'pino-pretty';

// pino-pretty is loaded only for pretty lines: a command whose stderr is a pipe starts faster.
const load = createRequire(import.meta.url);

export type { Logger } from 'pino';

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const satisfies readonly LevelWithSilent[];
export type LogLevel = (typeof LOG_LEVELS)[number];

export const LOG_FORMATS = ['auto', 'json', 'pretty'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

/** A log level from the command line or the environment (`where` names it in the error). */
export function parseLogLevel(s: string, where = '--log-level'): LogLevel {
  const v = s.trim().toLowerCase();
  if ((LOG_LEVELS as readonly string[]).includes(v)) return v as LogLevel;
  throw new Error(`${where} ${JSON.stringify(s)}: use one of ${LOG_LEVELS.join(', ')}`);
}

export function parseLogFormat(s: string, where = 'MIGSAFE_LOG_FORMAT'): LogFormat {
  const v = s.trim().toLowerCase();
  if ((LOG_FORMATS as readonly string[]).includes(v)) return v as LogFormat;
  throw new Error(`${where} ${JSON.stringify(s)}: use one of ${LOG_FORMATS.join(', ')}`);
}

/** Field names whose whole value is a secret, wherever they appear (two levels deep). */
const SECRET_KEYS = ['password', 'pass', 'secret', 'token', 'key', 'apiKey', 'authorization', 'auth'];
/** Field names that hold URLs: only the password inside them is masked. */
const URL_KEYS = ['redis', 'url', 'store', 'uri'];

const MASK = '***';

/**
 * Masks what a URL carries as credentials: `redis://:secret@h` → `redis://:***@h`,
 * `redis://user:secret@h` → `redis://user:***@h`, `?password=secret` → `?password=***`.
 */
export function maskSecrets(s: string): string {
  return s
    .replace(/\b([a-z][a-z0-9+.-]*:\/\/)([^\s/@:]*):([^\s/@]*)@/gi, (_m, scheme: string, user: string) => `${scheme}${user}:${MASK}@`)
    .replace(/\b([a-z][a-z0-9+.-]*:\/\/)([^\s/@:]+)@/gi, (_m, scheme: string) => `${scheme}${MASK}@`)
    .replace(/([?&](?:password|pass|token|key|secret)=)[^&\s#]*/gi, `$1${MASK}`);
}

function censor(value: unknown, path: string[]): unknown {
  const key = path[path.length - 1] ?? '';
  if (URL_KEYS.includes(key) && typeof value === 'string') return maskSecrets(value);
  return '[redacted]';
}

const paths = [...SECRET_KEYS, ...URL_KEYS].flatMap((k) => [k, `*.${k}`]);

export interface LoggerOptions {
  level?: LogLevel;
  /** pretty: pino-pretty's human lines; json: one JSON object per line. */
  pretty?: boolean;
  /** Colours in pretty lines (a terminal). */
  colorize?: boolean;
  /** Where lines go (default: stderr, written synchronously so that nothing is lost at exit); pretty lines too. */
  destination?: DestinationStream;
}

/** The line a person reads: `host: vm: message` (the fields stay in the JSON form). */
function humanLine(log: Record<string, unknown>, messageKey: string): string {
  const prefix = ['host', 'vm'].map((k) => log[k]).filter((v) => v !== undefined && v !== '');
  return [...prefix, log[messageKey] ?? ''].join(': ');
}

export function createLogger(o: LoggerOptions = {}): Logger {
  // Written synchronously: nothing is lost when the process exits right after a line.
  const out: DestinationStream = o.destination ?? { write: (s: string) => void writeSync(2, s) };
  let dest = out;
  if (o.pretty) {
    const { prettyFactory } = load('pino-pretty') as typeof PinoPretty;
    const prettify = prettyFactory({
      colorize: o.colorize ?? false,
      translateTime: 'SYS:HH:MM:ss.l',
      ignore: 'pid,hostname',
      hideObject: true,
      messageFormat: (log, key) => humanLine(log, key),
    });
    dest = { write: (s: string) => out.write(prettify(s)) };
  }
  return pino(
    {
      level: o.level ?? 'info',
      base: undefined,
      redact: { paths, censor },
      hooks: {
        // Messages are free text: mask credentials in the URLs they quote.
        logMethod(args, method) {
          const masked = args.map((a) => (typeof a === 'string' ? maskSecrets(a) : a)) as Parameters<typeof method>;
          method.apply(this, masked);
        },
      },
      formatters: { level: (label) => ({ level: label }) },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    dest,
  );
}

/** A logger that writes nothing (library callers and tests that do not care). */
export const silentLogger: Logger = pino({ level: 'silent' });

