// What differs when the store is a Redis Cluster: a command without a key goes to any one node,
// so whatever must see every key (SCAN) or every server (their persistence settings) asks each
// primary. Everything else is the same: a VM's keys share one hash tag, one slot, one node, so
// its scripts, MULTIs and pipelines run there whole.
import { createRequire } from 'node:module';
import type { Cluster, Redis } from 'ioredis';

/**
 * ioredis, loaded when a connection is first made: a command that never connects (a usage
 * error, `config check`, `--help`) starts about a third faster. It is CommonJS, so this is
 * the same module (and the same classes) an `import` elsewhere gets.
 */
export function ioredis(): typeof import('ioredis') {
  return createRequire(import.meta.url)('ioredis') as typeof import('ioredis');
}

export function isCluster(r: Redis): boolean {
  return (r as unknown) instanceof ioredis().Cluster;
}

/** The primaries: each node of a cluster that serves slots, else the one connection. */
export function primaries(r: Redis): Redis[] {
  return isCluster(r) ? (r as unknown as Cluster).nodes('master') : [r];
}

/** Every key matching `match` on every primary (SCAN: no server is blocked). */
export async function scanKeys(r: Redis, match: string): Promise<string[]> {
  const out: string[] = [];
  for (const node of primaries(r)) {
    let cursor = '0';
    do {
      const [next, keys] = await node.scan(cursor, 'MATCH', match, 'COUNT', 1000);
      cursor = next;
      out.push(...keys);
    } while (cursor !== '0');
  }
  return out;
}
