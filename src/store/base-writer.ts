// Writing a new base image (compaction.ts decides what goes in): its frames go to a temporary
// list, which one Lua script puts in place of the old base while dropping the versions it holds.
// Its frames are bound to the version the base holds (frame.ts); their count goes into that
// version's metadata (baseChunks), where a reader checks it; its page index (page-index.ts) is
// put in place by the same script (base:index, its length baseIndexBytes).
import type { Redis } from 'ioredis';
import type { VmKeys } from './keys.js';
import { FencedError } from './fenced-error.js';
import { encodeFrame, type CodecChoice } from './frame.js';
import { batchPages } from '../kernel/page-delta.js';
import { PageIndexBuilder } from './page-index.js';
import { delAcrossSlots, keysOfStripes, deleteVersions, formatStripes, shortStripe, stripeKeys, type Stripes } from './stripes.js';

const SWITCH_LUA = `
-- KEYS: newBase, baseChunks, base, committed, owner, meta of version, new index, base index, the version's own index
-- ARGV: version, lease ('' : unfenced), frames and stripe descriptor of a striped base ('' : the list KEYS[1]),
--       the new page index's length ('' : none)
-- Returns the versions dropped.
local owner = redis.call('GET', KEYS[5])
if ARGV[2] ~= '' and owner ~= ARGV[2] then
  return redis.error_reply('FENCED compaction to version ' .. ARGV[1] .. ': written under lease ' .. ARGV[2] .. ' but the lease is ' .. (owner or 'free'))
end
if redis.call('ZSCORE', KEYS[4], ARGV[1]) == false then
  return redis.error_reply('version ' .. ARGV[1] .. ' is no longer committed')
end
-- Checked before anything is written: a script's writes stay when it returns an error.
if ARGV[5] ~= '' and redis.call('STRLEN', KEYS[7]) ~= tonumber(ARGV[5]) then
  return redis.error_reply('base image of version ' .. ARGV[1] .. ' has no page index of ' .. ARGV[5] .. ' bytes')
end
local n
if ARGV[4] ~= '' then
  n = tonumber(ARGV[3])
  redis.call('HSET', KEYS[6], 'baseStripes', ARGV[4])
else
  n = redis.call('LLEN', KEYS[1])
  if n == 0 then
    return redis.error_reply('base image of version ' .. ARGV[1] .. ' has no frames')
  end
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('HDEL', KEYS[6], 'baseStripes')
end
if ARGV[5] ~= '' then
  redis.call('RENAME', KEYS[7], KEYS[8])
  redis.call('HSET', KEYS[6], 'baseIndexBytes', ARGV[5])
else
  redis.call('DEL', KEYS[8])
  redis.call('HDEL', KEYS[6], 'baseIndexBytes')
end
redis.call('DEL', KEYS[9])
redis.call('HDEL', KEYS[6], 'indexBytes')
redis.call('SET', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[6], 'baseChunks', n)
-- The version's own frames are in the base now (install deletes them).
redis.call('HDEL', KEYS[6], 'stripes')
local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[1])
return old
`;

/** A base image of `version` being written; nothing of it is used until install() succeeds. */
export class PendingBase {
  /** Where its frames go: frame i to lists[i % lists.length] (the temporary list, or its stripes). */
  private readonly lists: string[];
  private chunks = 0;
  private index = new PageIndexBuilder();

  constructor(
    private readonly redis: Redis,
    private readonly keys: VmKeys,
    readonly vmId: string,
    readonly version: number,
    /** The lease the writer compacts under, '' when unfenced (see CheckpointStore.fenceWith). */
    private readonly fence: () => string,
    /** On a cluster: the stripes it is spread over (stripes.ts), named afresh for each attempt. */
    private readonly stripes?: Stripes,
  ) {
    this.lists = stripes ? stripeKeys(vmId, stripes) : [keys.newBaseChunks(version)];
  }

  /** Drops what an earlier, interrupted compaction to the same version left (stripes: new names, nothing to drop). */
  async clear(): Promise<void> {
    this.chunks = 0;
    this.index = new PageIndexBuilder();
    await delAcrossSlots(this.redis, [...this.lists, this.keys.newBaseIndex(this.version)]);
  }

  /**
   * Frames a batch of page records and appends it (one at a time: a base image is as large as
   * the RAM). Returns the frame's size in bytes.
   */
  async addPages(records: Uint8Array, codec: CodecChoice): Promise<number> {
    const index = this.chunks;
    const bind = { vm: this.vmId, version: this.version, list: 'base' as const, index };
    const recs = batchPages(records);
    const frame = await encodeFrame('pages', records, recs.pages.length, codec, bind);
    if (this.chunks !== index) throw new Error(`base image of version ${this.version}: overlapping addPages calls`);
    this.index.addFrame(recs);
    this.chunks++;
    await this.redis.rpush(this.lists[index % this.lists.length]!, frame);
    return frame.length;
  }

  /**
   * Makes this the base, atomically with dropping the versions before `version` from the
   * committed set; then deletes their data, `version`'s own chunks (now inside the base) and
   * the old base image. Returns the dropped versions.
   */
  async install(): Promise<number[]> {
    const k = this.keys;
    // The script sees only the VM's slot: stripes are counted here (stripes.ts).
    if (this.stripes) {
      const short = await shortStripe(this.redis, this.lists, this.chunks);
      if (short || this.chunks === 0) {
        await this.clear().catch(() => {});
        throw new Error(`base image of version ${this.version} of VM "${this.vmId}": stripe ${short?.key ?? this.lists[0]} does not hold its frames`);
      }
    }
    const oldBase = await this.redis.get(k.base);
    const [oldStripes, ownStripes] = await Promise.all([
      oldBase ? this.redis.hget(k.version(Number(oldBase)), 'baseStripes') : null,
      this.redis.hget(k.version(this.version), 'stripes'),
    ]);
    let dropped: number[];
    try {
      const desc = this.stripes ? formatStripes(this.stripes) : '';
      const index = this.index.encode({ vm: this.vmId, version: this.version, list: 'base' });
      if (index) await this.redis.set(k.newBaseIndex(this.version), index);
      dropped = (
        (await this.redis.eval(
          SWITCH_LUA, 9, k.newBaseChunks(this.version), k.baseChunks, k.base, k.committed, k.owner, k.version(this.version),
          k.newBaseIndex(this.version), k.baseIndex, k.index(this.version),
          String(this.version), this.fence(), String(this.chunks), desc, index ? String(index.length) : '',
        )) as string[]
      ).map(Number);
    } catch (e) {
      await this.clear().catch(() => {});
      const msg = (e as Error).message;
      throw msg.includes('FENCED') ? new FencedError(msg) : e;
    }
    await deleteVersions(this.redis, this.vmId, dropped);
    // The version's own frames, and the old base's wherever it was (a new classic base replaced base:chunks already).
    const gone = [k.chunks(this.version)];
    gone.push(...keysOfStripes(this.vmId, ownStripes), ...keysOfStripes(this.vmId, oldStripes));
    if (this.stripes && oldBase && !oldStripes) gone.push(k.baseChunks);
    await delAcrossSlots(this.redis, gone);
    return dropped;
  }
}
