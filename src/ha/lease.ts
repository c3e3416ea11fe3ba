// Who may run the VM: a lease in the store.
//
//   migsafe:{id}:owner   string  "<host>|<token>", with a TTL (PX)
//   migsafe:{id}:epoch   string  fencing token counter (INCR on every new owner)
//
// The rule that decides which copy runs after a failure or a partition: ONLY THE HOLDER OF
// THE LEASE RUNS THE VM. The holder renews it every ttl/4; a holder that has not renewed for
// `ttl - margin` (it cannot reach the store) kills its own QEMU before the lease can expire in
// Redis; another side may take the lease only after it expired (or is handed over). So the
// side that can reach the store wins, and two copies never run at once.
import type { Redis } from 'ioredis';

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

export function leaseKeys(vm: string) {
  return { owner: `migsafe:{${vm}}:owner`, epoch: `migsafe:{${vm}}:epoch` };
}

export class Lease {
  private readonly k: { owner: string; epoch: string };
  /** Token while this side holds the lease, else 0. */
  token = 0;
  /** performance.now() of the last successful acquire/renew. */
  lastRenewed = 0;
  /** A renewal found another holder: this side lost the lease. */
  lost = false;

  constructor(
    private readonly redis: Redis,
    readonly vm: string,
    readonly host: string,
    readonly ttlMs: number,
  ) {
    this.k = leaseKeys(vm);
  }

  /** Every store call gives up after ttl/3: an unreachable store must not stall the fencing. */
  private eval(script: string, keys: number, ...args: string[]): Promise<unknown> {
    const limit = Math.max(200, Math.floor(this.ttlMs / 3));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the store did not answer in ${limit} ms`)), limit);
      this.redis.eval(script, keys, ...args).then(
        (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      );
    });
  }

  get value(): string {
    return `${this.host}|${this.token}`;
  }

  /** Takes the lease if it is free (or already ours). */
  async acquire(): Promise<boolean> {
    const t = performance.now();
    const r = (await this.eval(ACQUIRE, 2, this.k.owner, this.k.epoch, this.host, String(this.ttlMs))) as number | null;
    if (r === null) return false;
    this.lost = false;
    this.token = Number(r);
    this.lastRenewed = t;
    return true;
  }

  async renew(): Promise<boolean> {
    if (!this.token) return false;
    const t = performance.now();
    const r = Number(await this.eval(RENEW, 1, this.k.owner, this.value, String(this.ttlMs)));
    if (r === 1) {
      this.lastRenewed = t;
      return true;
    }
    this.token = 0;
    this.lost = true;
    return false;
  }

  /** Gives the lease to `to` (this side must hold it). Returns the new token or 0. */
  async handOver(to: string): Promise<number> {
    const r = (await this.eval(HANDOVER, 2, this.k.owner, this.k.epoch, this.value, to, String(this.ttlMs))) as
      | number
      | null;
    if (r === null) return 0;
    this.token = 0;
    return Number(r);
  }

  async release(): Promise<void> {
    if (!this.token) return;
    await this.eval(RELEASE, 1, this.k.owner, this.value).catch(() => {});
    this.token = 0;
  }

  /** Adopts a lease handed to this side (its token). */
  adopt(token: number): void {
    this.lost = false;
    this.token = token;
    this.lastRenewed = performance.now();
  }

  /** True while this side may still assume it holds the lease (no renewal for < ttl - margin). */
  safe(marginMs: number): boolean {
    return this.token !== 0 && performance.now() - this.lastRenewed < this.ttlMs - marginMs;
  }

  async holder(): Promise<LeaseHolder | null> {
    const [v, ttl] = await Promise.all([this.redis.get(this.k.owner), this.redis.pttl(this.k.owner)]);
    if (!v) return null;
    const [host, token] = v.split('|');
    return { host: host!, token: Number(token), ttlMs: ttl };
  }
}
