// A VM's lease in the store (ha/lease.ts decides when to take, renew and give it up):
//
//   migsafe:{id}:owner   string  "<host>|<token>", with a TTL (PX)
//   migsafe:{id}:epoch   string  fencing token counter (INCR on every new owner)
//
// Each operation is one Lua script, so checking the holder and changing the lease is atomic.
import type { Redis } from 'ioredis';
import { vmKeys, type VmKeys } from './keys.js';

const ACQUIRE = `
local v = redis.call('GET', KEYS[1])
if v then
  local h = string.match(v, '^([^|]*)|')
  if h ~= ARGV[1] then return nil end
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
`;

const RENEW = `
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
if v ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`;

const HANDOVER = `
local v = redis.call('GET', KEYS[1])
if v ~= ARGV[1] then return nil end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[2] .. '|' .. token, 'PX', ARGV[3])
return token
`;

// A holder whose lease ran out while the store was away takes it back under the same token,
// but only if nobody held it since: any other owner would have moved the epoch on.
const RECLAIM = `
local v = redis.call('GET', KEYS[1])
if v then
  if v ~= ARGV[1] then return 0 end
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
`;

const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

export interface LeaseHolder {
  host: string;
  token: number;
  /** ms left. */
  ttlMs: number;
}

/** The lease's keys of one VM. `redis` should be a connection of its own (see ha/lease.ts). */
export class LeaseStore {
  private readonly keys: VmKeys;

  constructor(
    private readonly redis: Redis,
    vm: string,
  ) {
    this.keys = vmKeys(vm);
  }

  /** The value the holder `host` with `token` finds in the store. */
  static value(host: string, token: number): string {
    return `${host}|${token}`;
  }

  /** Takes the lease for `host` if it is free (or already its own): the new token, or null. */
  async acquire(host: string, ttlMs: number): Promise<number | null> {
    const r = (await this.redis.eval(ACQUIRE, 2, this.keys.owner, this.keys.epoch, host, String(ttlMs))) as number | null;
    return r === null ? null : Number(r);
  }

  /** Extends the lease while it still holds `value`; false when it does not. */
  async renew(value: string, ttlMs: number): Promise<boolean> {
    return Number(await this.redis.eval(RENEW, 1, this.keys.owner, value, String(ttlMs))) === 1;
  }

  /** Gives the lease held as `value` to `to`: the new token, or null when `value` is not the holder. */
  async handOver(value: string, to: string, ttlMs: number): Promise<number | null> {
    const r = (await this.redis.eval(HANDOVER, 2, this.keys.owner, this.keys.epoch, value, to, String(ttlMs))) as
      | number
      | null;
    return r === null ? null : Number(r);
  }

  /** Holds `value` (token `token`) again if it is still ours or free with nobody else since; true when held. */
  async reclaim(value: string, token: number, ttlMs: number): Promise<boolean> {
    return Number(await this.redis.eval(RECLAIM, 2, this.keys.owner, this.keys.epoch, value, String(token), String(ttlMs))) === 1;
  }

  /** Drops the lease if it still holds `value`. */
  async release(value: string): Promise<void> {
    await this.redis.eval(RELEASE, 1, this.keys.owner, value);
  }

  async holder(): Promise<LeaseHolder | null> {
    const [v, ttl] = await Promise.all([this.redis.get(this.keys.owner), this.redis.pttl(this.keys.owner)]);
    if (!v) return null;
    const [host, token] = v.split('|');
    return { host: host!, token: Number(token), ttlMs: ttl };
  }
}
