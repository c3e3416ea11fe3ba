// Writing a new base image (compaction.ts decides what goes in): its frames go to a temporary
// list, which one Lua script puts in place of the old base while dropping the versions it holds.
// Its frames are bound to the version the base holds (frame.ts); their count goes into that
// version's metadata (baseChunks), where a reader checks it.
import type { Redis } from 'ioredis';
import type { VmKeys } from './keys.js';
import { FencedError } from './fenced-error.js';
import { encodeFrame, type CodecChoice } from './frame.js';
import { summarizeBatch } from '../kernel/page-delta.js';

const SWITCH_LUA = `
-- KEYS: newBase, baseChunks, base, committed, owner, meta of version ; ARGV: version, lease ('' : unfenced)
local owner = redis.call('GET', KEYS[5])
if ARGV[2] ~= '' and owner ~= ARGV[2] then
  return redis.error_reply('FENCED compaction to version ' .. ARGV[1] .. ': written under lease ' .. ARGV[2] .. ' but the lease is ' .. (owner or 'free'))
end
if redis.call('ZSCORE', KEYS[4], ARGV[1]) == false then
  return redis.error_reply('version ' .. ARGV[1] .. ' is no longer committed')
end
local n = redis.call('LLEN', KEYS[1])
if n == 0 then
  return redis.error_reply('base image of version ' .. ARGV[1] .. ' has no frames')
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('SET', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[6], 'baseChunks', n)
local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[1])
return old
`;

/** A base image of `version` being written; nothing of it is used until install() succeeds. */
export class PendingBase {
  private readonly tmp: string;
  private chunks = 0;

  constructor(
    private readonly redis: Redis,
    private readonly keys: VmKeys,
    readonly vmId: string,
    readonly version: number,
    /** The lease the writer compacts under, '' when unfenced (see CheckpointStore.fenceWith). */
    private readonly fence: () => string,
  ) {
    this.tmp = keys.newBaseChunks(version);
  }

  /** Drops what an earlier, interrupted compaction to the same version left. */
  async clear(): Promise<void> {
    this.chunks = 0;
    await this.redis.del(this.tmp);
  }

  /**
   * Frames a batch of page records and appends it (one at a time: a base image is as large as
   * the RAM). Returns the frame's size in bytes.
   */
  async addPages(records: Uint8Array, codec: CodecChoice): Promise<number> {
    const index = this.chunks;
    const bind = { vm: this.vmId, version: this.version, list: 'base' as const, index };
    const frame = await encodeFrame('pages', records, summarizeBatch(records).records, codec, bind);
    if (this.chunks !== index) throw new Error(`base image of version ${this.version}: overlapping addPages calls`);
    this.chunks++;
    await this.redis.rpush(this.tmp, frame);
    return frame.length;
  }

  /**
   * Makes this the base, atomically with dropping the versions before `version` from the
   * committed set; then deletes their data and `version`'s own chunks (now inside the base).
   * Returns the dropped versions.
   */
  async install(): Promise<number[]> {
    const k = this.keys;
    let dropped: number[];
    try {
      dropped = (
        (await this.redis.eval(SWITCH_LUA, 6, this.tmp, k.baseChunks, k.base, k.committed, k.owner, k.version(this.version), String(this.version), this.fence())) as string[]
      ).map(Number);
    } catch (e) {
      await this.clear().catch(() => {});
      const msg = (e as Error).message;
      throw msg.includes('FENCED') ? new FencedError(msg) : e;
    }
    if (dropped.length) {
      const pipe = this.redis.pipeline();
      for (const v of dropped) pipe.del(...k.versionAll(v));
      await pipe.exec();
    }
    await this.redis.del(k.chunks(this.version));
    return dropped;
  }
}
