// A private redis-server: loopback or a unix socket only, data in its own directory (AOF on,
// so a restarted server comes back with every committed version).
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { ioredis } from './redis-cluster.js';
import { explainRedisError, parseRedisTarget, redisOptions, type RedisAuth } from './redis-url.js';
import { childEnv, processAlive } from '../util/process.js';

export interface RedisServerOptions {
  dir: string;
  /** TCP port on 127.0.0.1; 0 picks a free one. Omit for a unix socket only. */
  port?: number;
  /** fsync policy of the append-only file. */
  appendfsync?: 'always' | 'everysec' | 'no';
  /** Address to listen on (default 127.0.0.1), e.g. a test host's own address. */
  bind?: string;
  /** argv prefix to start the server with, e.g. ['ip', 'netns', 'exec', NS] (tests). */
  wrap?: string[];
  /** A Redis Cluster node (cluster-enabled, its nodes.conf in `dir`); the slots are assigned by `redis-cli --cluster create`. */
  cluster?: boolean;
  /** A cluster node: ms without a reply before its peers count it failed (default 2000: a quick failover, as tests want). */
  clusterNodeTimeoutMs?: number;
}

export interface RedisServerHandle {
  pid: number;
  /** What `--redis` takes to reach it: redis://127.0.0.1:PORT or the socket path. */
  url: string;
  dir: string;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** The redis-server on PATH, or undefined. */
export function findRedisServer(): string | undefined {
  try {
    return execFileSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
}

function redisServerBinary(): string {
  const b = findRedisServer();
  if (!b) throw new Error('redis-server is not installed: `apt-get install redis-server` (or give --redis URL)');
  return b;
}

/** Starts a redis-server that outlives this process (checkpoints must survive the sidecar). */
export async function startRedisServer(opts: RedisServerOptions): Promise<RedisServerHandle> {
  mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
  const port = opts.port === undefined ? 0 : opts.port || (await freePort());
  const sock = join(opts.dir, 'redis.sock');
  const pidfile = join(opts.dir, 'redis.pid');
  if (existsSync(sock)) rmSync(sock);
  const args = [
    '--port', String(port),
    '--bind', opts.bind ?? '127.0.0.1',
    '--unixsocket', sock,
    '--unixsocketperm', '700',
    '--dir', opts.dir,
    '--pidfile', pidfile,
    '--appendonly', 'yes',
    '--appendfsync', opts.appendfsync ?? 'everysec',
    '--aof-load-truncated', 'yes',
    '--save', '',
    '--daemonize', 'no',
    '--protected-mode', opts.bind && opts.bind !== '127.0.0.1' ? 'no' : 'yes',
    '--logfile', join(opts.dir, 'redis.log'),
    // Checkpoint frames can be large.
    '--proto-max-bulk-len', '1gb',
    ...(opts.cluster ? ['--cluster-enabled', 'yes', '--cluster-config-file', join(opts.dir, 'nodes.conf'), '--cluster-node-timeout', String(opts.clusterNodeTimeoutMs ?? 2000)] : []),
  ];
  const cmd = [...(opts.wrap ?? []), redisServerBinary(), ...args];
  const child = spawn(cmd[0]!, cmd.slice(1), { detached: true, stdio: 'ignore', env: childEnv() });
  child.unref();
  const pid = child.pid;
  if (pid === undefined) throw new Error('cannot start redis-server');
  const url = port ? `redis://${opts.bind ?? '127.0.0.1'}:${port}` : sock;
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (!processAlive(pid)) {
      let log = '';
      try {
        log = readFileSync(join(opts.dir, 'redis.log'), 'utf8').split('\n').slice(-5).join('\n');
      } catch {
        /* no log */
      }
      throw new Error(`redis-server exited at start (dir ${opts.dir}):\n${log}`);
    }
    if (existsSync(sock)) {
      // The socket: the TCP address may be in another network namespace.
      const r = connectRedis(sock, { retry: false });
      try {
        await r.ping();
        // Ready also means the AOF is loaded.
        const info = await r.info('persistence');
        if (/loading:0/.test(info)) break;
      } catch {
        /* not yet */
      } finally {
        r.disconnect();
      }
    }
    if (Date.now() > deadline) throw new Error(`redis-server did not become ready in 10 s (dir ${opts.dir})`);
    await sleep(20);
  }
  return {
    pid,
    url,
    dir: opts.dir,
    async stop() {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        return;
      }
      for (let i = 0; i < 500 && processAlive(pid); i++) await sleep(10);
      // Stopped means gone: a server still alive after 5 s (a slow AOF flush) is killed.
      if (!processAlive(pid)) return;
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        return;
      }
      for (let i = 0; i < 500 && processAlive(pid); i++) await sleep(10);
    },
  };
}

/** The private server of this user's state directory: reused while it runs, started when not. */
export async function ensureLocalRedis(stateDir: string): Promise<string> {
  return runningLocalRedis(stateDir) ?? (await startRedisServer({ dir: join(stateDir, 'redis') })).url;
}

/** The socket of the private server of `stateDir` when it runs, without starting one. */
export function runningLocalRedis(stateDir: string): string | undefined {
  const dir = join(stateDir, 'redis');
  const sock = join(dir, 'redis.sock');
  const pidfile = join(dir, 'redis.pid');
  if (existsSync(pidfile) && existsSync(sock)) {
    const pid = Number(readFileSync(pidfile, 'utf8').trim());
    if (pid > 0 && processAlive(pid)) return sock;
  }
  return undefined;
}

export interface ConnectOptions {
  /** Keep reconnecting when the server goes away (the sidecar); off for one-shot commands. */
  retry?: boolean;
  /** Credentials and TLS material besides the URL's (src/store/redis-url.ts). */
  auth?: RedisAuth;
}

/**
 * redis://host:port[/db], rediss://..., a unix socket path, redis+sentinel://host:port,.../NAME or
 * redis+cluster://host:port,... with `opts.auth` (credentials, TLS files)
 * (src/store/redis-url.ts). Loopback only unless the user says otherwise.
 */
export function connectRedis(url: string, opts: ConnectOptions = {}): Redis {
  const target = parseRedisTarget(url);
  const common = {
    lazyConnect: false,
    enableAutoPipelining: true,
    maxRetriesPerRequest: opts.retry ? 3 : 0,
    retryStrategy: opts.retry ? (times: number) => Math.min(times * 100, 1000) : () => null,
    // Commands wait for the (re)connection; a one-shot client fails them when it gives up.
    enableOfflineQueue: true,
  };
  if (target.kind === 'cluster') {
    const c = new (ioredis().Cluster)(target.nodes, {
      enableAutoPipelining: true,
      enableOfflineQueue: true,
      // Reads go to primaries too: a replica may lag the commit that a reader was told of.
      scaleReads: 'master',
      clusterRetryStrategy: common.retryStrategy,
      // A failover or a slot moved: ask again where the slot is now, a few times.
      retryDelayOnFailover: 200,
      retryDelayOnClusterDown: 200,
      maxRedirections: 16,
      redisOptions: {
        maxRetriesPerRequest: common.maxRetriesPerRequest,
        ...redisOptions(url, opts.auth),
      },
    });
    c.on('error', () => {
      /* surfaced by the failing command */
    });
    // Same commands; what differs (SCAN, per-server settings) goes through redis-cluster.ts.
    return c as unknown as Redis;
  }
  const node = redisOptions(url, opts.auth);
  const r = new (ioredis().Redis)({
    ...common,
    ...node,
    // While no sentinel answers (or none knows a primary yet): the same patience as above.
    ...(node.sentinels ? { sentinelRetryStrategy: common.retryStrategy } : {}),
  });
  r.on('error', () => {
    /* surfaced by the failing command */
  });
  return r;
}

/**
 * PINGs, or throws what is wrong and its fix (explainRedisError; `where`: the URL, masked). A
 * failed connection (a TLS handshake refused, a reset, a refused port) fails the PING with
 * ioredis' bare "Connection is closed." or "Reached the max retries"; the socket's own error
 * says why, so that is the one explained. A reply (NOAUTH, WRONGPASS) is explained as it is.
 */
export async function pingExplained(r: Redis, where: string): Promise<void> {
  let cause: Error | undefined;
  const onError = (e: Error) => (cause ??= e);
  r.on('error', onError);
  try {
    await r.ping();
  } catch (e) {
    const reply = (e as Error).name === 'ReplyError';
    throw new Error(explainRedisError(reply ? (e as Error) : (cause ?? (e as Error)), where));
  } finally {
    r.off('error', onError);
  }
}
