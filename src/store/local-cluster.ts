// A Redis Cluster of one's own on loopback: `primaries` (+ `replicas` each) redis-server
// processes, slots assigned by `redis-cli --cluster create`, returned once every node says the
// cluster is up (and every replica has synced). For tests and benchmarks; stop() ends them all.
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connectRedis, freePort, startRedisServer, type RedisServerHandle } from './redis-server.js';

export interface LocalCluster {
  /** What `--redis` takes: redis+cluster://127.0.0.1:P,127.0.0.1:P,... */
  url: string;
  nodes: (RedisServerHandle & { port: number })[];
  stop(): Promise<void>;
}

export interface LocalClusterOptions {
  /** Each node's data goes to DIR/node-<i>. */
  dir: string;
  primaries?: number;
  replicas?: 0 | 1;
  appendfsync?: 'always' | 'everysec' | 'no';
  /** cluster-node-timeout (default 2000 ms: quick failovers for tests). */
  nodeTimeoutMs?: number;
}

export async function startLocalCluster(o: LocalClusterOptions): Promise<LocalCluster> {
  const count = (o.primaries ?? 3) * (1 + (o.replicas ?? 0));
  const nodes: LocalCluster['nodes'] = [];
  const stop = async () => {
    await Promise.all(nodes.map((n) => n.stop()));
  };
  try {
    for (let i = 0; i < count; i++) {
      const dir = join(o.dir, `node-${i}`);
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      const port = await freePort();
      const srv = await startRedisServer({ dir, port, appendfsync: o.appendfsync ?? 'always', cluster: true, clusterNodeTimeoutMs: o.nodeTimeoutMs });
      nodes.push({ ...srv, port });
    }
    execFileSync(
      'redis-cli',
      ['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', String(o.replicas ?? 0), '--cluster-yes'],
      { stdio: 'pipe', timeout: 60_000 },
    );
    // Every node must agree the cluster is up before a client can rely on the slot map.
    const deadline = Date.now() + 30_000;
    for (const n of nodes) {
      const r = connectRedis(n.url);
      try {
        for (;;) {
          const info = String(await r.call('CLUSTER', 'INFO'));
          // A replica that never finished its first sync cannot fail over (replica validity).
          const repl = String(await r.info('replication'));
          if (/cluster_state:ok/.test(info) && (!/^role:slave/m.test(repl) || /master_link_status:up/.test(repl))) break;
          if (Date.now() > deadline) throw new Error(`cluster node ${n.url} not ready after 30 s:\n${info}\n${repl}`);
          await sleep(100);
        }
      } finally {
        r.disconnect();
      }
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return { url: `redis+cluster://${nodes.map((n) => `127.0.0.1:${n.port}`).join(',')}`, nodes, stop };
}
