// A replicated store as an operator runs it, on loopback: a primary, replicas (REPLICAOF) and
// three Sentinels (redis-server --sentinel), all real processes, stopped at teardown.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import type { Redis } from 'ioredis';
import { connectRedis, freePort, type RedisServerHandle } from '../../src/store/redis-server.js';
import { testClient, testRedis } from './redis.js';
import { waitFor } from './wait.js';
import { killQuietly } from './cli.js';

export interface SentinelTopology {
  primary: RedisServerHandle;
  replicas: RedisServerHandle[];
  /** The sentinels' ports. */
  sentinelPorts: number[];
  name: string;
  /** What `--redis` takes: redis+sentinel://127.0.0.1:P,.../NAME */
  url: string;
  /** The primary's port as the sentinels see it now. */
  primaryPort(): Promise<number>;
}

export function portOf(url: string): number {
  return Number(/:(\d+)$/.exec(url)![1]);
}

async function replicate(t: Test, replica: RedisServerHandle, primaryPort: number): Promise<Redis> {
  const r = testClient(t, replica.url);
  await r.call('REPLICAOF', '127.0.0.1', String(primaryPort));
  await waitFor('the replica to sync', 30_000, async () => (/master_link_status:up/.test(await r.info('replication')) ? true : undefined));
  return r;
}

export async function sentinelTopology(t: Test, opts: { replicas: number; downAfterMs?: number; name?: string }): Promise<SentinelTopology> {
  const name = opts.name ?? 'migsafe';
  const primary = await testRedis(t);
  const replicas: RedisServerHandle[] = [];
  for (let i = 0; i < opts.replicas; i++) {
    const r = await testRedis(t);
    await replicate(t, r, portOf(primary.url));
    replicas.push(r);
  }
  const sentinelPorts: number[] = [];
  const clients: Redis[] = [];
  const logs: string[] = [];
  for (let i = 0; i < 3; i++) {
    const dir = mkdtempSync(join(tmpdir(), 'migsafe-sentinel-'));
    const port = await freePort();
    const conf = join(dir, 'sentinel.conf');
    writeFileSync(
      conf,
      [
        `port ${port}`,
        'bind 127.0.0.1',
        'daemonize no',
        `dir ${dir}`,
        `logfile ${join(dir, 'sentinel.log')}`,
        `sentinel monitor ${name} 127.0.0.1 ${portOf(primary.url)} 2`,
        `sentinel down-after-milliseconds ${name} ${opts.downAfterMs ?? 1000}`,
        `sentinel failover-timeout ${name} 10000`,
        `sentinel parallel-syncs ${name} ${Math.max(1, opts.replicas)}`,
        '',
      ].join('\n'),
    );
    const child = spawn('redis-server', [conf, '--sentinel'], { stdio: 'ignore', detached: true });
    child.unref();
    t.teardown(async () => {
      killQuietly(child.pid, 'SIGKILL');
      await new Promise((r) => setTimeout(r, 50));
      rmSync(dir, { recursive: true, force: true });
    });
    sentinelPorts.push(port);
    logs.push(join(dir, 'sentinel.log'));
    // The sentinel may not listen yet: this client retries where testClient's gives up.
    const client = connectRedis(`redis://127.0.0.1:${port}`, { retry: true });
    t.teardown(() => client.disconnect());
    clients.push(client);
  }
  // Ready once every sentinel knows the primary, its replicas and the other sentinels.
  let seen = '';
  await waitFor('the sentinels to see the whole topology', 30_000, async () => {
    const counts: string[] = [];
    for (const c of clients) {
      const reps = (await c.call('SENTINEL', 'REPLICAS', name).catch((e: Error) => e.message)) as unknown[] | string;
      const peers = (await c.call('SENTINEL', 'SENTINELS', name).catch((e: Error) => e.message)) as unknown[] | string;
      counts.push(`${typeof reps === 'string' ? reps : reps.length} replicas, ${typeof peers === 'string' ? peers : peers.length} peers`);
    }
    seen = counts.join('; ');
    return counts.every((c) => c === `${opts.replicas} replicas, 2 peers`) ? true : undefined;
  }).catch((e: Error) => {
    const tail = logs.map((l) => { try { return readFileSync(l, 'utf8').split('\n').slice(-6).join('\n'); } catch { return '(no log)'; } });
    throw new Error(`${e.message} (they see: ${seen}); the sentinels' logs end with:\n${tail.join('\n--\n')}`);
  });
  return {
    primary,
    replicas,
    sentinelPorts,
    name,
    url: `redis+sentinel://${sentinelPorts.map((p) => `127.0.0.1:${p}`).join(',')}/${name}`,
    primaryPort: async () => Number(((await clients[0]!.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', name)) as string[])[1]),
  };
}
