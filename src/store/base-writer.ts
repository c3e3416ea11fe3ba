// Writing a new base image (compaction.ts decides what goes in): its frames go to a temporary
// list, which one Lua script puts in place of the old base while dropping the versions it holds.
import type { Redis } from 'ioredis';
import type { VmKeys } from './keys.js';
import { FencedError } from './fenced-error.js';

const SWITCH_LUA = `
-- KEYS: newBase, baseChunks, base, committed, owner ; ARGV: version, lease ('' : unfenced)
local owner = redis.call('GET', KEYS[5])
if ARGV[2] ~= '' and owner ~= ARGV[2] then
  return redis.error_reply('FENCED compaction to version ' .. ARGV[1] .. ': written under lease ' .. ARGV[2] .. ' but the lease is ' .. (owner or 'free'))
end
if redis.call('ZSCORE', KEYS[4], ARGV[1]) == false then
  return redis.error_reply('version ' .. ARGV[1] .. ' is no longer committed')
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('SET', KEYS[3], ARGV[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[1])
return old
`;

/** A base image of `version` being written; nothing of it is used until install() succeeds. */
export class PendingBase {
  private readonly tmp: string;

  constructor(
    private readonly redis: Redis,
    private readonly keys: VmKeys,
    readonly version: number,
    /** The lease the writer compacts under, '' when unfenced (see CheckpointStore.fenceWith). */
    private readonly fence: () => string,
  ) {
    this.tmp = keys.newBaseChunks(version);
  }

  /** Drops what an earlier, interrupted compaction to the same version left. */
  async clear(): Promise<void> {
    await this.redis.del(this.tmp);
  }

  /** Appends a frame of page records (one at a time: a base image is as large as the RAM). */
  async addChunk(frame: Buffer): Promise<void> {
    await this.redis.rpush(this.tmp, frame);
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
        (await this.redis.eval(SWITCH_LUA, 5, this.tmp, k.baseChunks, k.base, k.committed, k.owner, String(this.version), this.fence())) as string[]
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
