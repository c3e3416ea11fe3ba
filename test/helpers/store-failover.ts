// The store host of a cluster as a replicated store: the cluster's redis-server is the primary,
// two replicas and three Sentinels run beside it in the store host's namespace (all real
// processes). Agents reach it as redis+sentinel://; the test reaches each server by its unix
// socket (the hosts' addresses are not routed to the test's own namespace).
import { writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { connectRedis, startRedisServer, type RedisServerHandle } from '../../src/store/redis-server.js';
import { waitFor } from '../../src/util/wait.js';
import type { Hosts } from './hosts.js';

export const SENTINEL_NAME = 'migsafe';

export interface ReplicatedStore {
  /** What `--redis` takes: redis+sentinel://STO:P1,STO:P2,STO:P3/migsafe */
  url: string;
  /** The unix socket of the server that is the primary now. */
  primarySocket(): Promise<string>;
  /** The primary's pid now (to kill it). */
  primaryPid(): Promise<number>;
  stop(): Promise<void>;
}

async function role(sock: string): Promise<string> {
  const r = connectRedis(sock, { retry: false });
  try {
    return /role:(\w+)/.exec(await r.info('replication'))?.[1] ?? 'unknown';
  } catch {
    return 'down';
  } finally {
    r.disconnect();
  }
}

export async function replicatedStore(hosts: Hosts, dir: string, primary: RedisServerHandle, primaryPort: number): Promise<ReplicatedStore> {
  const ip = hosts.sto.ip;
  const servers: RedisServerHandle[] = [primary];
  const sentinels: ChildProcess[] = [];
  for (let i = 1; i <= 2; i++) {
    const r = await startRedisServer({ dir: join(dir, `redis-r${i}`), port: primaryPort + i, bind: ip, appendfsync: 'always', wrap: hosts.exec('sto') });
    servers.push(r);
    const c = connectRedis(r.url.startsWith('/') ? r.url : join(r.dir, 'redis.sock'), { retry: false });
    try {
      await c.call('REPLICAOF', ip, String(primaryPort));
      await waitFor(`replica ${i} to sync`, 30_000, async () => (/master_link_status:up/.test(await c.info('replication')) ? true : undefined));
    } finally {
      c.disconnect();
    }
  }
  const sentinelSockets: string[] = [];
  const ports: number[] = [];
  for (let i = 0; i < 3; i++) {
    const sdir = join(dir, `sentinel-${i}`);
    mkdirSync(sdir, { recursive: true });
    const port = 26390 + i;
    const sock = join(sdir, 'sentinel.sock');
    const conf = join(sdir, 'sentinel.conf');
    writeFileSync(conf, [
      `port ${port}`, `bind ${ip}`, `unixsocket ${sock}`, 'unixsocketperm 700', 'daemonize no', `dir ${sdir}`,
      `logfile ${join(sdir, 'sentinel.log')}`, 'protected-mode no',
      `sentinel monitor ${SENTINEL_NAME} ${ip} ${primaryPort} 2`,
      `sentinel down-after-milliseconds ${SENTINEL_NAME} 1000`,
      `sentinel failover-timeout ${SENTINEL_NAME} 10000`, '',
    ].join('\n'));
    sentinels.push(hosts.spawn('sto', ['redis-server', conf, '--sentinel']));
    sentinelSockets.push(sock);
    ports.push(port);
  }
  // Ready once every sentinel knows both replicas and the other two sentinels.
  await waitFor('the sentinels to see the store topology', 30_000, async () => {
    for (const sock of sentinelSockets) {
      const c = connectRedis(sock, { retry: false });
      try {
        const reps = (await c.call('SENTINEL', 'REPLICAS', SENTINEL_NAME)) as unknown[];
        const peers = (await c.call('SENTINEL', 'SENTINELS', SENTINEL_NAME)) as unknown[];
        if (reps.length < 2 || peers.length < 2) return undefined;
      } catch {
        return undefined;
      } finally {
        c.disconnect();
      }
    }
    return true;
  });
  const socketOf = (s: RedisServerHandle) => join(s.dir, 'redis.sock');
  const primaryNow = async (): Promise<RedisServerHandle> => {
    for (const s of servers) if ((await role(socketOf(s))) === 'master') return s;
    throw new Error('no redis-server of the store host is a primary');
  };
  return {
    url: `redis+sentinel://${ports.map((p) => `${ip}:${p}`).join(',')}/${SENTINEL_NAME}`,
    primarySocket: async () => socketOf(await primaryNow()),
    primaryPid: async () => (await primaryNow()).pid,
    async stop() {
      for (const s of sentinels) s.kill('SIGKILL');
      await Promise.all(servers.slice(1).map((s) => s.stop().catch(() => {})));
    },
  };
}
