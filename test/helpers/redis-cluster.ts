// A Redis Cluster of the test's own: `primaries` (+ one replica each, if asked) real
// redis-server processes on loopback, slots assigned by `redis-cli --cluster create`, stopped
// at teardown.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Test } from 'tap';
import { connectRedis, freePort, startRedisServer, type RedisServerHandle } from '../../src/store/redis-server.js';

export interface TestCluster {
  /** What `--redis` takes: redis+cluster://127.0.0.1:P,127.0.0.1:P,... */
  url: string;
  nodes: (RedisServerHandle & { port: number })[];
}

export async function testCluster(t: Test, opts: { primaries?: number; replicas?: 0 | 1 } = {}): Promise<TestCluster> {
  const count = (opts.primaries ?? 3) * (1 + (opts.replicas ?? 0));
  const nodes: TestCluster['nodes'] = [];
  for (let i = 0; i < count; i++) {
    const dir = mkdtempSync(join(tmpdir(), 'migsafe-cluster-'));
    const port = await freePort();
    const srv = await startRedisServer({ dir, port, appendfsync: 'always', cluster: true });
    nodes.push({ ...srv, port });
    t.teardown(async () => {
      await srv.stop();
      rmSync(dir, { recursive: true, force: true });
    });
  }
  execFileSync(
    'redis-cli',
    ['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', String(opts.replicas ?? 0), '--cluster-yes'],
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
  return { url: `redis+cluster://${nodes.map((n) => `127.0.0.1:${n.port}`).join(',')}`, nodes };
}

/** CLUSTER NODES as a surviving node sees it (for a failure message). */
export async function clusterNodes(c: TestCluster, except?: number): Promise<string> {
  const n = c.nodes.find((x) => x.port !== except)!;
  const r = connectRedis(n.url);
  try {
    return String(await r.call('CLUSTER', 'NODES'));
  } finally {
    r.disconnect();
  }
}

/** The node (port) that serves a key's slot. */
export async function nodeOfKey(c: TestCluster, key: string): Promise<number> {
  const r = connectRedis(c.nodes[0]!.url);
  try {
    const slot = Number(await r.call('CLUSTER', 'KEYSLOT', key));
    const slots = (await r.call('CLUSTER', 'SLOTS')) as [number, number, [string, number, string]][];
    const range = slots.find(([lo, hi]) => slot >= lo && slot <= hi);
    if (!range) throw new Error(`slot ${slot} is served by no node`);
    return Number(range[2][1]);
  } finally {
    r.disconnect();
  }
}

/**
 * Moves the slot of `key` to the primary at `toPort`, as `redis-cli --cluster reshard` does:
 * IMPORTING/MIGRATING, then MIGRATE of its keys in batches (a writer meanwhile sees ASK and
 * TRYAGAIN), then SETSLOT NODE on every primary. Returns the keys moved.
 */
export async function moveSlotOf(c: TestCluster, key: string, toPort: number, pauseMs = 0): Promise<number> {
  const fromPort = await nodeOfKey(c, key);
  const conn = (port: number) => connectRedis(c.nodes.find((n) => n.port === port)!.url);
  const [from, to] = [conn(fromPort), conn(toPort)];
  try {
    const slot = Number(await from.call('CLUSTER', 'KEYSLOT', key));
    const [fromId, toId] = [String(await from.call('CLUSTER', 'MYID')), String(await to.call('CLUSTER', 'MYID'))];
    await to.call('CLUSTER', 'SETSLOT', String(slot), 'IMPORTING', fromId);
    await from.call('CLUSTER', 'SETSLOT', String(slot), 'MIGRATING', toId);
    let moved = 0;
    for (;;) {
      const keys = (await from.call('CLUSTER', 'GETKEYSINSLOT', String(slot), '2')) as string[];
      if (keys.length === 0) break;
      await from.call('MIGRATE', '127.0.0.1', String(toPort), '', '0', '10000', 'REPLACE', 'KEYS', ...keys);
      moved += keys.length;
      if (pauseMs) await sleep(pauseMs);
    }
    for (const n of c.nodes) {
      const r = connectRedis(n.url);
      try {
        if (/^role:master/m.test(String(await r.info('replication')))) await r.call('CLUSTER', 'SETSLOT', String(slot), 'NODE', toId);
      } finally {
        r.disconnect();
      }
    }
    return moved;
  } finally {
    from.disconnect();
    to.disconnect();
  }
}
