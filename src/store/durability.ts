// When a commit counts: a version is reported committed (to the output gate, to a migration's
// switch-over, to the round's log and metrics) only once it is durable by the chosen policy.
//
//   fsync        the server writes its append-only file with `appendfsync always`: the commit
//                script's reply comes after the fsync (Redis 7.0 has no WAITAOF to ask for it)
//   replicas:N   after the commit, WAIT N: at least N replicas acknowledged every write so far
//   none         the commit script's reply is enough (a crash of the store host can lose the
//                newest versions, and packets they explained may already have left)
//   auto         fsync where the server does it (migsafe's own server is told to), else none
import type { Redis } from 'ioredis';
import { isCluster, primaries } from './redis-cluster.js';

export type Durability = { kind: 'fsync' } | { kind: 'none' } | { kind: 'replicas'; replicas: number; timeoutMs: number };
export type DurabilityChoice = Durability | { kind: 'auto' };

/** The default time a commit waits for its replicas. */
const REPLICA_TIMEOUT_MS = 1000;

export function parseDurability(spec: string): DurabilityChoice {
  if (spec === 'auto' || spec === 'fsync' || spec === 'none') return { kind: spec };
  const m = /^replicas:(\d+)(?::(\d+))?$/.exec(spec);
  const replicas = Number(m?.[1]);
  // WAIT's timeout 0 waits forever; a timer takes at most 2^31-1 ms.
  const timeoutMs = m?.[2] !== undefined ? Number(m[2]) : REPLICA_TIMEOUT_MS;
  if (m && replicas >= 1 && replicas <= 1000 && timeoutMs >= 1 && timeoutMs <= 2 ** 31 - 1) return { kind: 'replicas', replicas, timeoutMs };
  throw new Error(`--durability ${spec}: use auto, fsync, none or replicas:N[:TIMEOUT_MS] (N from 1 to 1000 replicas, TIMEOUT_MS from 1 to 2147483647; WAIT 0 would wait forever)`);
}

/** The policy as the log states it; for `none`, with what it risks. */
export function describeDurability(d: Durability): string {
  if (d.kind === 'replicas') return `replicas:${d.replicas} (WAIT ${d.replicas} ${d.timeoutMs} ms after each commit)`;
  if (d.kind === 'fsync') return 'fsync (appendfsync always)';
  return 'none: a crash of the store host can lose the newest versions, and packets they explained may have left';
}

/** The policy as a version's metadata records it: fsync, replicas:N or none. */
export function durabilityName(d: Durability): string {
  return d.kind === 'replicas' ? `replicas:${d.replicas}` : d.kind;
}

/** A commit that is in the store but not yet durable by the policy: not reported, packets stay held. */
export class NotDurableError extends Error {
  override name = 'NotDurableError';
  constructor(
    message: string,
    /** The version, which is in the store: the next round's deltas apply to it. */
    readonly version: number,
  ) {
    super(message);
  }
}

async function config(redis: Redis, key: string): Promise<string | undefined> {
  const r = (await redis.call('CONFIG', 'GET', key)) as string[];
  return r[1];
}

/**
 * Checks that the server can honour `choice` and settles `auto`. `own`: migsafe started the
 * server, so it may set appendfsync itself. Refuses, naming the setting, what it cannot honour.
 */
export async function settleDurability(redis: Redis, choice: DurabilityChoice, own: boolean, where: string): Promise<Durability> {
  if (choice.kind === 'none') return choice;
  if (isCluster(redis)) return settleOnCluster(redis, choice, where);
  if (choice.kind === 'replicas') {
    const info = (await redis.info('replication')) as string;
    const role = /^role:(\w+)/m.exec(info)?.[1];
    if (role !== 'master') throw new Error(`--durability replicas:${choice.replicas}: Redis at ${where} is a ${role}, not a primary`);
    return choice;
  }
  let aof: string | undefined;
  let fsync: string | undefined;
  try {
    aof = await config(redis, 'appendonly');
    fsync = await config(redis, 'appendfsync');
  } catch (e) {
    // An ACL user without CONFIG (usual: it is in @dangerous) cannot tell: auto settles for none.
    if (!/NOPERM/.test((e as Error).message)) throw e;
    if (choice.kind === 'fsync') {
      throw new Error(`--durability fsync: the Redis user at ${where} may not run CONFIG GET, so migsafe cannot check appendfsync: grant +config|get in its ACL, or use --durability replicas:N or none`);
    }
    return { kind: 'none' };
  }
  if (own && aof === 'yes' && fsync !== 'always') {
    await redis.call('CONFIG', 'SET', 'appendfsync', 'always');
    fsync = 'always';
  }
  if (aof === 'yes' && fsync === 'always') return { kind: 'fsync' };
  if (choice.kind === 'fsync') {
    throw new Error(
      `--durability fsync: Redis at ${where} has appendonly ${aof} and appendfsync ${fsync}, so a commit is not on disk when it returns; ` +
        'set `appendonly yes` and `appendfsync always` there, or use --durability replicas:N or none',
    );
  }
  return { kind: 'none' };
}

/** A cluster: WAIT would go to any node, not the VM's primary; fsync must hold on every primary. */
async function settleOnCluster(redis: Redis, choice: DurabilityChoice, where: string): Promise<Durability> {
  if (choice.kind === 'replicas') {
    throw new Error(
      `--durability replicas:${choice.replicas}: not on a Redis Cluster (${where}) yet — WAIT must reach the primary of the VM's slot; ` +
        'use --durability fsync with `appendonly yes` and `appendfsync always` on every primary, or none',
    );
  }
  const weak: string[] = [];
  for (const node of primaries(redis)) {
    const [aof, fsync] = [await config(node, 'appendonly'), await config(node, 'appendfsync')];
    if (aof !== 'yes' || fsync !== 'always') weak.push(`${node.options.host}:${node.options.port} (appendonly ${aof}, appendfsync ${fsync})`);
  }
  if (weak.length === 0) return { kind: 'fsync' };
  if (choice.kind === 'fsync') {
    throw new Error(
      `--durability fsync: on the Redis Cluster at ${where}, ${weak.join(', ')} would not have a commit on disk when it returns; ` +
        'set `appendonly yes` and `appendfsync always` on every primary, or use --durability none',
    );
  }
  return { kind: 'none' };
}

/** After the commit script of `version`: waits for the policy; throws NotDurableError when it is not met. */
export async function ensureDurable(redis: Redis, d: Durability, version: number): Promise<void> {
  if (d.kind !== 'replicas') return;
  const acks = Number(await redis.call('WAIT', String(d.replicas), String(d.timeoutMs)));
  if (acks >= d.replicas) return;
  throw new NotDurableError(
    `version ${version} is in the store but fewer than ${d.replicas} replica(s) acknowledged it ` +
      `within ${d.timeoutMs} ms: not reported as committed, held packets stay held`,
    version,
  );
}
