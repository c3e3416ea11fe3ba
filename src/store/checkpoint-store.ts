// Writing versions of one VM: begin → chunks (pipelined) → device state → atomic commit.
import type { Redis } from 'ioredis';
import { STORE_FORMAT, vmKeys, type VmKeys } from './keys.js';
import { metaFromHash, metaToHash, type VersionMeta } from './version-meta.js';
import { PendingBase } from './base-writer.js';
import { encodeFrame, type CodecChoice } from './frame.js';
import { summarizeBatch } from '../kernel/page-delta.js';
import { FencedError } from './fenced-error.js';
import { NotDurableError, durabilityName, ensureDurable, type Durability } from './durability.js';

export { FencedError, NotDurableError };

interface WriterSettings {
  /** The lease this writer commits under ("host|token"), '' when unfenced (tests, benchmarks). */
  fence: () => string;
  durability: Durability;
  /** replicas:N: versions committed but not acknowledged yet; marked once a later WAIT covers them. */
  unacked: number[];
}

export interface VmRecord {
  format: number;
  /** The QEMU command line the user gave (without what migsafe adds). */
  argv: string[];
  ramBytes: number;
  pageSize: number;
  createdAt: number;
  /** Directory QEMU was started in: its command line may name files relative to it. */
  cwd: string;
}

/** The commit found that the store's head is not the version the deltas were made against. */
export class ParentMismatchError extends Error {
  override name = 'ParentMismatchError';
}

// Atomic commit: the version becomes visible only if the writer still holds the VM's lease
// (when it writes under one: ARGV[4], "host|token"), all its data is there and its parent is
// the head (else the deltas would apply to the wrong image).
const COMMIT_LUA = `
local version = tonumber(ARGV[1])
local parent = tonumber(ARGV[2])
if ARGV[4] ~= '' then
  local owner = redis.call('GET', KEYS[6])
  if owner ~= ARGV[4] then
    return redis.error_reply('FENCED version ' .. version .. ': written under lease ' .. ARGV[4] .. ' but the lease is ' .. (owner or 'free'))
  end
end
local top = redis.call('ZREVRANGE', KEYS[1], 0, 0)
local head = 0
if #top > 0 then head = tonumber(top[1]) end
if parent ~= 0 and parent ~= head then
  return redis.error_reply('PARENT version ' .. version .. ' was made against ' .. parent .. ' but the head is ' .. head)
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then
  return redis.error_reply('NOTPENDING version ' .. version .. ' is not being written')
end
local n = redis.call('LLEN', KEYS[4])
if n ~= tonumber(ARGV[3]) then
  return redis.error_reply('INCOMPLETE version ' .. version .. ' has ' .. n .. ' of ' .. ARGV[3] .. ' chunks')
end
if redis.call('EXISTS', KEYS[5]) == 0 then
  return redis.error_reply('INCOMPLETE version ' .. version .. ' has no device state')
end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[3], unpack(fields))
redis.call('ZADD', KEYS[1], version, version)
redis.call('SREM', KEYS[2], ARGV[1])
return head
`;

// Marks versions acknowledged, but only those still there (compaction may have folded one away).
const MARK_ACKED_LUA = `
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HSET', KEYS[i], 'acknowledgedAt', ARGV[1]) end
end
return 0
`;

/** A list of page frames: a version's own, or the base image's (compaction). */
export type ChunkList = number | 'base';

/** The only door to a VM's keys in Redis: writers, readers and compaction go through it. */
export class CheckpointStore {
  private readonly keys: VmKeys;
  /** How this writer commits: under which lease, and when a commit counts (see fenceWith, setDurability). */
  private readonly writer: WriterSettings = { fence: () => '', durability: { kind: 'none' }, unacked: [] };

  constructor(
    private readonly redis: Redis,
    readonly vmId: string,
  ) {
    this.keys = vmKeys(vmId);
  }

  /**
   * From now on every commit and compaction of this writer is refused atomically (FencedError)
   * unless the VM's lease is still `lease()` — the holder's "host|token" (see lease-store.ts).
   */
  fenceWith(lease: () => string): void {
    this.writer.fence = () => lease() || 'no lease held';
  }

  /** From now on a commit returns only once it is durable by `d` (durability.ts), or throws NotDurableError. */
  setDurability(d: Durability): void {
    this.writer.durability = d;
  }

  /** Records (or checks) the VM: a VM id keeps its RAM size for life. */
  async init(argv: readonly string[], ramBytes: number, cwd = process.cwd()): Promise<void> {
    const existing = await this.vm();
    if (existing && existing.ramBytes !== ramBytes) {
      throw new Error(
        `VM "${this.vmId}" is stored with ${existing.ramBytes} bytes of RAM, this QEMU has ${ramBytes}: ` +
          'use another --vm id, or delete the old checkpoints with `migsafe delete --vm ' +
          this.vmId +
          '`',
      );
    }
    await this.redis.hset(this.keys.vm, {
      format: STORE_FORMAT,
      argv: JSON.stringify(argv),
      ramBytes,
      pageSize: 4096,
      cwd,
      createdAt: existing?.createdAt ?? Date.now(),
    });
  }

  async vm(): Promise<VmRecord | null> {
    const h = await this.redis.hgetall(this.keys.vm);
    if (!h.format) return null;
    if (Number(h.format) !== STORE_FORMAT) {
      throw new Error(`VM "${this.vmId}" is stored in format ${h.format}; this migsafe reads format ${STORE_FORMAT}`);
    }
    return {
      format: Number(h.format),
      argv: JSON.parse(h.argv ?? '[]') as string[],
      ramBytes: Number(h.ramBytes),
      pageSize: Number(h.pageSize),
      createdAt: Number(h.createdAt),
      cwd: h.cwd ?? '/',
    };
  }

  /** Committed version numbers, oldest first. */
  async committed(): Promise<number[]> {
    return (await this.redis.zrange(this.keys.committed, 0, -1)).map(Number);
  }

  async head(): Promise<number> {
    const top = await this.redis.zrevrange(this.keys.committed, 0, 0);
    return top.length ? Number(top[0]) : 0;
  }

  async base(): Promise<number> {
    return Number((await this.redis.get(this.keys.base)) ?? 0);
  }

  async meta(version: number): Promise<VersionMeta | null> {
    const h = await this.redis.hgetall(this.keys.version(version));
    if (!h.version) return null;
    return metaFromHash(h, `version ${version} of VM "${this.vmId}"`);
  }

  async metas(): Promise<VersionMeta[]> {
    const versions = await this.committed();
    const pipe = this.redis.pipeline();
    for (const v of versions) pipe.hgetall(this.keys.version(v));
    const res = (await pipe.exec()) ?? [];
    return res.map(([err, h], i) => {
      if (err) throw err;
      return metaFromHash(h as Record<string, string>, `version ${versions[i]} of VM "${this.vmId}"`);
    });
  }

  /** Deletes versions left uncommitted by a writer that died. Call before writing. */
  async cleanupPending(): Promise<number[]> {
    const pending = (await this.redis.smembers(this.keys.pending)).map(Number);
    if (pending.length === 0) return [];
    const pipe = this.redis.pipeline();
    for (const v of pending) {
      pipe.del(...this.keys.versionAll(v));
      pipe.srem(this.keys.pending, String(v));
    }
    await pipe.exec();
    return pending;
  }

  async begin(parent: number): Promise<PendingVersion> {
    const version = await this.redis.incr(this.keys.seq);
    await this.redis.sadd(this.keys.pending, String(version));
    return new PendingVersion(this.redis, this.keys, version, parent, this.writer);
  }

  /** Starts a new base image holding version `version` whole (see compaction.ts). */
  async beginBase(version: number): Promise<PendingBase> {
    const base = new PendingBase(this.redis, this.keys, version, () => this.writer.fence());
    await base.clear();
    return base;
  }

  private listKey(list: ChunkList): string {
    return list === 'base' ? this.keys.baseChunks : this.keys.chunks(list);
  }

  /** Frames in a chunk list (0 when it does not exist). */
  chunkCount(list: ChunkList): Promise<number> {
    return this.redis.llen(this.listKey(list));
  }

  /** Frames `first`..`last` (inclusive) of a chunk list. */
  chunkRange(list: ChunkList, first: number, last: number): Promise<Buffer[]> {
    return this.redis.lrangeBuffer(this.listKey(list), first, last);
  }

  /** The device state frame of a version, or null. */
  deviceState(version: number): Promise<Buffer | null> {
    return this.redis.getBuffer(this.keys.device(version));
  }

  /** Where the agent that runs the VM listens (ADDR:PORT), for `migsafe migrate`. */
  async setAgentAddress(address: string): Promise<void> {
    await this.redis.set(this.keys.agent, address);
  }

  async agentAddress(): Promise<string | null> {
    return this.redis.get(this.keys.agent);
  }

  /** Removes every key of the VM. */
  async deleteAll(): Promise<number> {
    let n = 0;
    let cursor = '0';
    do {
      const [next, keys] = await this.redis.scan(cursor, 'MATCH', `${this.keys.prefix}*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length) n += await this.redis.del(...keys);
    } while (cursor !== '0');
    return n;
  }
}

/** A version being written. Nothing of it is visible until commit() succeeds. */
export class PendingVersion {
  private chunks = 0;
  private pageBytes = 0;
  private deviceBytes = 0;
  private inflight: Promise<unknown>[] = [];

  constructor(
    private readonly redis: Redis,
    private readonly keys: VmKeys,
    readonly version: number,
    readonly parent: number,
    private readonly writer: WriterSettings,
  ) {}

  get chunkCount(): number {
    return this.chunks;
  }

  /**
   * Frames a batch of page records (compressed with `codec`) and queues it: encode → frame →
   * push in one place. Returns the number of records.
   */
  async addPages(records: Uint8Array, codec: CodecChoice): Promise<number> {
    const n = summarizeBatch(records).records;
    this.addChunk(await encodeFrame('pages', records, n, codec));
    return n;
  }

  /** Queues a frame of page records; ioredis pipelines the writes, commit() awaits them. */
  addChunk(frame: Buffer): void {
    this.chunks++;
    this.pageBytes += frame.length;
    this.inflight.push(this.redis.rpush(this.keys.chunks(this.version), frame));
  }

  setDeviceState(frame: Buffer): void {
    this.deviceBytes = frame.length;
    this.inflight.push(this.redis.set(this.keys.device(this.version), frame));
  }

  /** Waits for every write, then makes the version visible atomically. */
  async commit(
    meta: Omit<VersionMeta, 'version' | 'parent' | 'chunks' | 'bytesStored' | 'deviceStateStored' | 'committedAt'>,
  ): Promise<VersionMeta> {
    await Promise.all(this.inflight.splice(0));
    const full: VersionMeta = {
      ...meta,
      version: this.version,
      parent: this.parent,
      chunks: this.chunks,
      bytesStored: this.pageBytes,
      deviceStateStored: this.deviceBytes,
      committedAt: Date.now(),
    };
    const fence = this.writer.fence();
    if (fence) full.writer = fence;
    full.durability = durabilityName(this.writer.durability);
    const k = this.keys;
    try {
      await this.redis.eval(
        COMMIT_LUA,
        6,
        k.committed,
        k.pending,
        k.version(this.version),
        k.chunks(this.version),
        k.device(this.version),
        k.owner,
        String(this.version),
        String(this.parent),
        String(this.chunks),
        fence,
        ...metaToHash(full),
      );
    } catch (e) {
      const msg = (e as Error).message;
      if (msg.includes('FENCED')) throw new FencedError(msg);
      if (msg.includes('PARENT')) throw new ParentMismatchError(msg);
      throw e;
    }
    try {
      await ensureDurable(this.redis, this.writer.durability, this.version);
    } catch (e) {
      if (e instanceof NotDurableError) this.writer.unacked.push(this.version);
      throw e;
    }
    if (this.writer.durability.kind === 'replicas') {
      // WAIT covered every write so far: this version and the earlier unacknowledged ones.
      // (The mark itself reaches the replicas with the next WAIT; until then inspect says no.)
      full.acknowledgedAt = Date.now();
      const marked = this.writer.unacked.splice(0).concat(this.version);
      await this.redis.eval(MARK_ACKED_LUA, marked.length, ...marked.map((v) => this.keys.version(v)), String(full.acknowledgedAt));
    }
    return full;
  }

  /** Drops what was written (best effort: cleanupPending() catches what this misses). */
  async abort(): Promise<void> {
    await Promise.allSettled(this.inflight.splice(0));
    await this.redis
      .multi()
      .del(...this.keys.versionAll(this.version))
      .srem(this.keys.pending, String(this.version))
      .exec();
  }
}
