// A version being written: its frames (each bound to the VM, the version and its place in the
// list, see frame.ts) are pipelined to Redis, then one Lua script commits it atomically.
import type { Redis } from 'ioredis';
import type { VmKeys } from './keys.js';
import { metaToHash, type VersionMeta } from './version-meta.js';
import { MAX_DEVICE_STATE_BYTES, encodeFrame, type CodecChoice, type FrameBinding } from './frame.js';
import { batchPages } from '../kernel/page-delta.js';
import { PageIndexBuilder } from './page-index.js';
import { FencedError } from './fenced-error.js';
import { NotDurableError, durabilityName, ensureDurable, type Durability } from './durability.js';
import { delAcrossSlots, formatStripes, shortStripe, stripeKeys, type Stripes } from './stripes.js';

export interface WriterSettings {
  /** The lease this writer commits under ("host|token"), '' when unfenced (tests, benchmarks). */
  fence: () => string;
  durability: Durability;
  /** replicas:N: versions committed but not acknowledged yet; marked once a later WAIT covers them. */
  unacked: number[];
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
-- ARGV[3] < 0: the frames are striped over other slots, counted by the writer (stripes.ts)
if tonumber(ARGV[3]) >= 0 then
  local n = redis.call('LLEN', KEYS[4])
  if n ~= tonumber(ARGV[3]) then
    return redis.error_reply('INCOMPLETE version ' .. version .. ' has ' .. n .. ' of ' .. ARGV[3] .. ' chunks')
  end
end
if redis.call('EXISTS', KEYS[5]) == 0 then
  return redis.error_reply('INCOMPLETE version ' .. version .. ' has no device state')
end
-- ARGV[5]: the page index's length ('' : the version has none)
if ARGV[5] ~= '' and redis.call('STRLEN', KEYS[7]) ~= tonumber(ARGV[5]) then
  return redis.error_reply('INCOMPLETE version ' .. version .. ' has no page index of ' .. ARGV[5] .. ' bytes')
end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[3], unpack(fields))
redis.call('ZADD', KEYS[1], version, version)
redis.call('SREM', KEYS[2], ARGV[1])
return head
`;

/** A version being written. Nothing of it is visible until commit() succeeds. */
// Marks versions acknowledged, but only those still there (compaction may have folded one away).
const MARK_ACKED_LUA = `
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HSET', KEYS[i], 'acknowledgedAt', ARGV[1]) end
end
return 0
`;

export class PendingVersion {
  private chunks = 0;
  private pageBytes = 0;
  private deviceBytes = 0;
  private inflight: Promise<unknown>[] = [];
  /** The page index of its frames, built as they are added (page-index.ts). */
  private readonly index = new PageIndexBuilder();

  constructor(
    private readonly redis: Redis,
    private readonly keys: VmKeys,
    readonly vmId: string,
    readonly version: number,
    readonly parent: number,
    private readonly writer: WriterSettings,
    /** Where its frames go on a cluster (stripes.ts); undefined: the one list v:{n}:chunks. */
    readonly stripes?: Stripes,
  ) {
    this.lists = stripes ? stripeKeys(vmId, stripes) : [keys.chunks(version)];
  }

  /** The keys its frames go to: frame i to lists[i % lists.length]. */
  private readonly lists: string[];

  get chunkCount(): number {
    return this.chunks;
  }

  /** Where the frame at `index` of this version's chunk list belongs (frame.ts). */
  chunkBinding(index: number): FrameBinding {
    return { vm: this.vmId, version: this.version, list: 'version', index };
  }

  /** Where this version's device state frame belongs. */
  deviceBinding(): FrameBinding {
    return { vm: this.vmId, version: this.version, list: 'device', index: 0 };
  }

  /**
   * Frames a batch of page records (compressed with `codec`) and queues it: encode → frame →
   * push in one place. Returns the number of records. Calls must not overlap (a frame is
   * bound to its place in the list).
   */
  async addPages(records: Uint8Array, codec: CodecChoice): Promise<number> {
    const recs = batchPages(records);
    const index = this.chunks;
    const frame = await encodeFrame('pages', records, recs.pages.length, codec, this.chunkBinding(index));
    if (this.chunks !== index) throw new Error(`version ${this.version}: overlapping addPages calls (frame ${index} would land at ${this.chunks})`);
    this.index.addFrame(recs);
    this.push(frame);
    return recs.pages.length;
  }

  /**
   * Queues a frame of page records, bound to chunkBinding(chunkCount); ioredis pipelines the
   * writes, commit() awaits them. Its records are not looked at: the version gets no page index.
   */
  addChunk(frame: Buffer): void {
    this.index.invalidate();
    this.push(frame);
  }

  private push(frame: Buffer): void {
    this.chunks++;
    this.pageBytes += frame.length;
    const i = this.chunks - 1;
    this.inflight.push(this.redis.rpush(this.lists[i % this.lists.length]!, frame));
  }

  /** Frames the device state (compressed with `codec`) and queues it. */
  async setDevice(raw: Uint8Array, codec: CodecChoice): Promise<void> {
    if (raw.length > MAX_DEVICE_STATE_BYTES) {
      throw new Error(
        `version ${this.version} of VM "${this.vmId}": device state of ${raw.length} bytes is over the ${MAX_DEVICE_STATE_BYTES >> 20} MiB cap a reader accepts`,
      );
    }
    this.setDeviceState(await encodeFrame('device', raw, 0, codec, this.deviceBinding()));
  }

  /** Queues a device state frame bound to deviceBinding(). */
  setDeviceState(frame: Buffer): void {
    this.deviceBytes = frame.length;
    this.inflight.push(this.redis.set(this.keys.device(this.version), frame));
  }

  /** Waits for every write, then makes the version visible atomically. */
  async commit(
    meta: Omit<VersionMeta, 'version' | 'parent' | 'chunks' | 'bytesStored' | 'deviceStateStored' | 'committedAt'>,
  ): Promise<VersionMeta> {
    const index = this.index.encode({ vm: this.vmId, version: this.version, list: 'version' });
    if (index) this.inflight.push(this.redis.set(this.keys.index(this.version), index));
    await Promise.all(this.inflight.splice(0));
    if (this.stripes) await this.countStripes();
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
    if (this.stripes) full.stripes = formatStripes(this.stripes);
    if (index) full.indexBytes = index.length;
    full.durability = durabilityName(this.writer.durability);
    const k = this.keys;
    try {
      await this.redis.eval(
        COMMIT_LUA,
        7,
        k.committed,
        k.pending,
        k.version(this.version),
        k.chunks(this.version),
        k.device(this.version),
        k.owner,
        k.index(this.version),
        String(this.version),
        String(this.parent),
        String(this.stripes ? -1 : this.chunks),
        fence,
        index ? String(index.length) : '',
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

  /** The commit script sees only the VM's slot: each stripe is counted here instead. */
  private async countStripes(): Promise<void> {
    const short = await shortStripe(this.redis, this.lists, this.chunks);
    if (short) throw new Error(`INCOMPLETE version ${this.version} of VM "${this.vmId}": stripe ${short.key} holds ${short.len} of its ${short.want} frames`);
  }

  /** Drops what was written (best effort: cleanupPending() catches what this misses). */
  async abort(): Promise<void> {
    await Promise.allSettled(this.inflight.splice(0));
    if (this.stripes) await delAcrossSlots(this.redis, this.lists);
    await this.redis
      .multi()
      .del(...this.keys.versionAll(this.version))
      .srem(this.keys.pending, String(this.version))
      .exec();
  }
}
