// A Redis Cluster of the test's own (src/store/local-cluster.ts), stopped at teardown, and the
// test's tools on it: which node serves a key, moving a slot as a re-shard does.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Test } from 'tap';
import { startLocalCluster, type LocalCluster } from '../../src/store/local-cluster.js';
import { connectRedis } from '../../src/store/redis-server.js';

export type TestCluster = LocalCluster;

export async function testCluster(t: Test, opts: { primaries?: number; replicas?: 0 | 1 } = {}): Promise<TestCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-cluster-'));
  let c: LocalCluster;
  try {
    c = await startLocalCluster({ dir, ...opts, appendfsync: 'always' });
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  t.teardown(async () => {
    await c.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  return c;
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
