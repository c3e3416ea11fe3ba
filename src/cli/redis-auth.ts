// Redis credentials and TLS material from the command line, MIGSAFE_* variables and config
// files. Secrets come from files or the environment, never from argv (where `ps` shows them to
// every user): `--redis-password` exists only as MIGSAFE_REDIS_PASSWORD and a config-file key,
// and the parser refuses it on the command line (parser.ts). A password in the URL is accepted
// (Redis' own convention) and masked in the process title at start (hardening.ts).
import { readFileSync, statSync } from 'node:fs';
import type { Argv } from 'yargs';
import { urlCredentials, type RedisAuth } from '../store/redis-url.js';

/** Options that carry a secret's value: refused on the command line. */
export const SECRET_OPTIONS = ['redis-password'];

export function withRedisAuth<T>(y: Argv<T>) {
  return y
    .option('redis-user', { type: 'string', describe: 'ACL user to log in to Redis as (or redis://USER:PASS@...)' })
    .option('redis-password-file', { type: 'string', describe: 'file holding the Redis password (first line; not readable by others)' })
    .option('redis-password', {
      type: 'string',
      describe: 'the Redis password: only as MIGSAFE_REDIS_PASSWORD or a config-file key, refused on the command line (ps shows it)',
    })
    .option('redis-ca', { type: 'string', describe: 'rediss://: PEM file of the CA that signed the server certificate (default: the system CAs)' })
    .option('redis-cert', { type: 'string', describe: 'rediss://: client certificate (PEM), if the server demands one (with --redis-key)' })
    .option('redis-key', { type: 'string', describe: 'rediss://: private key (PEM) of --redis-cert' })
    .option('redis-sentinel-password-file', { type: 'string', describe: 'redis+sentinel://: file holding the sentinels\' own password' })
    // At parse time, so that a wrong combination or an unreadable file stops the command before it does anything.
    .check((a) => {
      redisAuthFrom(a as unknown as RedisAuthArgs);
      return true;
    });
}

export interface RedisAuthArgs {
  redis?: string;
  'redis-user'?: string;
  'redis-password-file'?: string;
  'redis-password'?: string;
  'redis-ca'?: string;
  'redis-cert'?: string;
  'redis-key'?: string;
  'redis-sentinel-password-file'?: string;
}

/** A secret's file: owned by anyone, but not readable or writable by others; its first line. */
export function readSecretFile(file: string, option: string, what = 'the password'): string {
  const text = readFile(file, option, `a file holding ${what}`, (mode) => {
    if (mode & 0o006) {
      throw new Error(`--${option} ${file}: other users can read or write it (mode ${(mode & 0o777).toString(8)}): \`chmod 600 ${file}\` (or 640 for a group)`);
    }
  });
  const line = text.toString('utf8').split(/\r?\n/)[0] ?? '';
  if (!line) throw new Error(`--${option} ${file}: its first line is empty: put ${what} there`);
  return line;
}

/** A regular file's contents; `checkMode` sees its mode first. Errors name the option and what to give. */
function readFile(file: string, option: string, what: string, checkMode: (mode: number) => void = () => {}): Buffer {
  const cannot = (e: unknown) => new Error(`--${option} ${file}: cannot read it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): give ${what}`);
  let st;
  try {
    st = statSync(file);
  } catch (e) {
    throw cannot(e);
  }
  if (!st.isFile()) throw new Error(`--${option} ${file}: not a file (a ${st.isDirectory() ? 'directory' : 'special file'}): give ${what}`);
  checkMode(st.mode);
  try {
    return readFileSync(file);
  } catch (e) {
    throw cannot(e);
  }
}

function pem(file: string, option: string): Buffer {
  const b = readFile(file, option, 'a PEM file');
  if (!b.includes('-----BEGIN ')) throw new Error(`--${option} ${file}: not a PEM file (no -----BEGIN line): give a PEM file`);
  return b;
}

/** The RedisAuth the options give, checked against the URL; undefined when none is set. */
export function redisAuthFrom(a: RedisAuthArgs): RedisAuth | undefined {
  const set = (k: keyof RedisAuthArgs) => a[k] !== undefined && a[k] !== '';
  const given = (['redis-user', 'redis-password-file', 'redis-password', 'redis-ca', 'redis-cert', 'redis-key', 'redis-sentinel-password-file'] as const).filter(set);
  if (!given.length) return undefined;
  const url = a.redis;
  if (url === undefined) {
    throw new Error(`--${given[0]} is set, but there is no --redis: migsafe's own redis-server needs no credentials; give --redis URL or unset it (MIGSAFE_${given[0]!.toUpperCase().replace(/-/g, '_')}, config file)`);
  }
  const inUrl = urlCredentials(url);
  const pwSources = [inUrl.password !== undefined && 'the --redis URL', set('redis-password-file') && '--redis-password-file', set('redis-password') && 'MIGSAFE_REDIS_PASSWORD (or redis-password in a config file)'].filter(Boolean);
  if (pwSources.length > 1) throw new Error(`the Redis password is given twice (${pwSources.join(' and ')}): give it one way`);
  if (inUrl.username !== undefined && set('redis-user') && inUrl.username !== a['redis-user']) {
    throw new Error(`--redis-user ${a['redis-user']} and the user in the --redis URL (${inUrl.username}) differ: give the user one way`);
  }
  const tlsGiven = (['redis-ca', 'redis-cert', 'redis-key'] as const).filter(set);
  if (tlsGiven.length && !url.startsWith('rediss://')) {
    throw new Error(`--${tlsGiven[0]} is for TLS: use a rediss://HOST:PORT URL (redis:// and unix sockets are not encrypted)`);
  }
  if (set('redis-cert') !== set('redis-key')) throw new Error('--redis-cert and --redis-key go together: give both, or neither');
  if (set('redis-sentinel-password-file') && !url.startsWith('redis+sentinel://')) {
    throw new Error('--redis-sentinel-password-file is for redis+sentinel:// URLs');
  }
  return {
    ...(set('redis-user') ? { username: a['redis-user'] } : {}),
    ...(set('redis-password-file') ? { password: readSecretFile(a['redis-password-file']!, 'redis-password-file') } : {}),
    ...(set('redis-password') ? { password: a['redis-password'] } : {}),
    ...(set('redis-sentinel-password-file') ? { sentinelPassword: readSecretFile(a['redis-sentinel-password-file']!, 'redis-sentinel-password-file') } : {}),
    ...(tlsGiven.length
      ? {
          tls: {
            ...(set('redis-ca') ? { ca: pem(a['redis-ca']!, 'redis-ca') } : {}),
            ...(set('redis-cert') ? { cert: pem(a['redis-cert']!, 'redis-cert'), key: pem(a['redis-key']!, 'redis-key') } : {}),
          },
        }
      : {}),
  };
}
