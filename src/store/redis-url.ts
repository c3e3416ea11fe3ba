// What `--redis` names: one server (redis://, rediss://, a unix socket path), a primary found
// through Redis Sentinel (redis+sentinel://host:port,host:port/NAME), which ioredis follows
// across a failover: the connection asks the sentinels for the new primary and goes on there,
// or a Redis Cluster (redis+cluster://host:port,host:port: any of its nodes; ioredis finds the
// rest and follows MOVED/ASK). A VM's keys share one hash tag, so they live in one slot.
// Credentials come from the URL (`redis://user:pass@h`) or from RedisAuth (a password file, the
// environment, --redis-user), never both; certificates for rediss:// from files (RedisAuth.tls).
import type { RedisOptions } from 'ioredis';
import { maskSecrets } from '../util/logger.js';

export type RedisTarget =
  | { kind: 'socket'; path: string }
  | { kind: 'tcp'; host: string; port: number; db: number; tls: boolean; username?: string; password?: string }
  | {
      kind: 'sentinel';
      sentinels: { host: string; port: number }[];
      name: string;
      username?: string;
      password?: string;
      db: number;
    }
  | { kind: 'cluster'; nodes: { host: string; port: number }[]; username?: string; password?: string };

/** Credentials and TLS material not carried by the URL (src/cli/redis-auth.ts reads them from files). */
export interface RedisAuth {
  username?: string;
  password?: string;
  /** Sentinel: the sentinels' own password (requirepass of the sentinel processes). */
  sentinelPassword?: string;
  /** rediss://: the CA to trust (default: the system's), and a client certificate if the server asks. */
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer };
}

const SENTINEL_FORM = 'redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/PRIMARY_NAME[/DB]';
const CLUSTER_FORM = 'redis+cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]';

function bad(spec: string, why: string, form: string): Error {
  return new Error(`--redis ${maskSecrets(spec)}: ${why}; the form is ${form}`);
}

function hostPorts(spec: string, list: string, form: string): { host: string; port: number }[] {
  return list.split(',').map((hp) => {
    const h = /^([^:,]+):(\d+)$/.exec(hp);
    if (!h || Number(h[2]) < 1 || Number(h[2]) > 65535) throw bad(spec, `"${hp}" is not HOST:PORT`, form);
    return { host: h[1]!, port: Number(h[2]) };
  });
}

export function parseRedisTarget(spec: string): RedisTarget {
  if (spec.startsWith('/') || spec.startsWith('./')) return { kind: 'socket', path: spec };
  if (/^rediss?:\/\//.test(spec)) return parseTcp(spec);
  if (spec.startsWith('redis+cluster://')) {
    const c = /^redis\+cluster:\/\/(?:([^:@/]*):([^@/]*)@)?([^/]+)\/?$/.exec(spec);
    if (!c) throw bad(spec, 'cannot read it', CLUSTER_FORM);
    return {
      kind: 'cluster',
      nodes: hostPorts(spec, c[3]!, CLUSTER_FORM),
      ...(c[1] ? { username: decodeURIComponent(c[1]) } : {}),
      ...(c[2] ? { password: decodeURIComponent(c[2]) } : {}),
    };
  }
  if (!spec.startsWith('redis+sentinel://')) {
    throw new Error(`--redis ${maskSecrets(spec)}: use redis://HOST:PORT, rediss://HOST:PORT, a unix socket path, ${SENTINEL_FORM} or ${CLUSTER_FORM}`);
  }
  const m = /^redis\+sentinel:\/\/(?:([^:@/]*):([^@/]*)@)?([^/]+)\/([^/?]+)(?:\/(\d+))?$/.exec(spec);
  if (!m) throw bad(spec, 'cannot read it', SENTINEL_FORM);
  const sentinels = hostPorts(spec, m[3]!, SENTINEL_FORM);
  return {
    kind: 'sentinel',
    sentinels,
    name: decodeURIComponent(m[4]!),
    ...(m[1] ? { username: decodeURIComponent(m[1]) } : {}),
    ...(m[2] ? { password: decodeURIComponent(m[2]) } : {}),
    db: m[5] ? Number(m[5]) : 0,
  };
}

const TCP_FORM = 'redis[s]://[[USER]:PASSWORD@]HOST[:PORT][/DB]';

function parseTcp(spec: string): RedisTarget {
  let u: URL;
  try {
    u = new URL(spec);
  } catch {
    throw bad(spec, 'cannot read it', TCP_FORM);
  }
  if (!u.hostname) throw bad(spec, 'no host', TCP_FORM);
  if (u.search || u.hash) throw bad(spec, 'query parameters are not read (give credentials and certificates with --redis-user, --redis-password-file, --redis-ca)', TCP_FORM);
  const db = /^\/?(\d*)$/.exec(u.pathname);
  if (!db) throw bad(spec, `"${u.pathname}" is not a database number`, TCP_FORM);
  return {
    kind: 'tcp',
    host: u.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: u.port ? Number(u.port) : 6379,
    db: db[1] ? Number(db[1]) : 0,
    tls: u.protocol === 'rediss:',
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
  };
}

/** Whether the URL itself carries a user or a password. */
export function urlCredentials(spec: string): { username?: string; password?: string } {
  const t = parseRedisTarget(spec);
  return t.kind === 'socket' ? {} : { username: t.username, password: t.password };
}

/** ioredis options for `spec` with `auth` (checked by the CLI not to contradict the URL). */
export function redisOptions(spec: string, auth: RedisAuth = {}): RedisOptions {
  const t = parseRedisTarget(spec);
  const username = (t.kind !== 'socket' && t.username) || auth.username;
  const password = (t.kind !== 'socket' && t.password) || auth.password;
  const creds = { ...(username ? { username } : {}), ...(password ? { password } : {}) };
  if (t.kind === 'socket') return { path: t.path, ...creds };
  const tls = auth.tls ? { ...(auth.tls.ca ? { ca: auth.tls.ca } : {}), ...(auth.tls.cert ? { cert: auth.tls.cert, key: auth.tls.key } : {}) } : {};
  if (t.kind === 'tcp') return { host: t.host, port: t.port, db: t.db, ...creds, ...(t.tls ? { tls } : {}) };
  // A cluster's nodes: the options of each connection (connectRedis makes the Cluster of t.nodes).
  if (t.kind === 'cluster') return creds;
  return {
    sentinels: t.sentinels,
    name: t.name,
    db: t.db,
    ...creds,
    ...(auth.sentinelPassword ? { sentinelPassword: auth.sentinelPassword } : {}),
  };
}

/**
 * What a failure to talk to the server means, and the fix: a wrong or missing password, an
 * untrusted certificate. `where` is the URL as it may be printed (masked).
 */
export function explainRedisError(e: Error, where: string): string {
  const m = e.message;
  if (/WRONGPASS|invalid password|invalid username-password/i.test(m)) {
    return `Redis at ${where} refused the credentials (${m.split('\n')[0]}): check the password (--redis-password-file FILE, MIGSAFE_REDIS_PASSWORD, or the URL) and the user (--redis-user or redis://USER:PASS@...)`;
  }
  if (/NOAUTH|Authentication required/i.test(m)) {
    return `Redis at ${where} wants a password (${m.split('\n')[0]}): give it with --redis-password-file FILE or MIGSAFE_REDIS_PASSWORD (and --redis-user NAME for an ACL user)`;
  }
  if (/NOPERM/.test(m)) {
    return `Redis at ${where}: the user may not run a command migsafe needs (${m.split('\n')[0]}): grant it in the server's ACL (e.g. ACL SETUSER NAME ~migsafe:* +@all)`;
  }
  // The server's alert that it wants ours (TLS 1.3: "tlsv13 alert certificate required"; 1.2:
  // "handshake failure" or a reset) comes before the checks of its certificate, which it also names.
  if (/alert certificate required|peer did not return a certificate/i.test(m)) {
    return `TLS to Redis at ${where} failed (${m}): the server demands a client certificate: give --redis-cert FILE and --redis-key FILE`;
  }
  if (/self[- ]signed|unable to (get|verify)|UNABLE_TO|certificate|CERT_|Hostname\/IP does not match/i.test(m)) {
    return `TLS to Redis at ${where} failed (${m}): give the CA that signed the server's certificate with --redis-ca FILE, and check the host name in --redis is in that certificate`;
  }
  if (/ECONNRESET|socket hang up|alert/i.test(m) && /^rediss|TLS/i.test(where)) {
    return `TLS to Redis at ${where} failed (${m}): if the server demands a client certificate, give --redis-cert FILE and --redis-key FILE`;
  }
  return `cannot reach Redis at ${where}: ${m}`;
}
