// A chunk list spread over a Redis Cluster's primaries, so that one large VM's bytes do not all
// sit on the shard of its hash tag. The VM's metadata, committed set and commit script stay in
// its own slot; only page frames move out.
//
// A striped list is S lists ("stripes"), one per primary when it was written: frame i is at
// position floor(i / S) of stripe i % S. Stripe t of a list named NAME is the key
//   migsafe:{<vm>/<NAME>/<t>}:chunks        NAME: v<version>, or b<version>.<nonce> for a base
// whose hash tag `<vm>/<NAME>/<t>` was picked (t = 0, 1, 2 …) so its slot is served by that
// primary. The list's descriptor "NAME:t0,t1,…" goes into the version's metadata (`stripes`;
// a base image's into `baseStripes`), written by the commit that makes it visible: a reader
// finds every stripe from there. '/' cannot occur in a VM id, so these keys never pass for
// another VM's. The commit script cannot count keys in other slots: the writer counts each
// stripe before it commits, and a reader counts again (and checks every frame's binding).
import type { Cluster, Redis } from 'ioredis';
import { checkVmId, vmKeys } from './keys.js';
import { isCluster } from './redis-cluster.js';

export interface Stripes {
  /** v<version>, or b<version>.<nonce> for a base image (a new name for every attempt). */
  name: string;
  tags: number[];
}

/** Most stripes a list may have (a descriptor read from the store is input). */
export const MAX_STRIPES = 64;

/** The key of stripe `tag` of list `name` of VM `vm`. */
export function stripeKey(vm: string, name: string, tag: number): string {
  return `migsafe:{${checkVmId(vm)}/${name}/${tag}}:chunks`;
}

export function stripeKeys(vm: string, s: Stripes): string[] {
  return s.tags.map((t) => stripeKey(vm, s.name, t));
}

export function formatStripes(s: Stripes): string {
  return `${s.name}:${s.tags.join(',')}`;
}

const NAME = /^(?:v[1-9]\d{0,15}|b[1-9]\d{0,15}\.[a-z0-9]{1,16})$/;

/** Reads a descriptor from the store; throws (naming `where`) on anything malformed. */
export function parseStripes(desc: string, where: string): Stripes {
  const m = /^([^:]+):(\d+(?:,\d+)*)$/.exec(desc);
  const tags = m ? m[2]!.split(',').map(Number) : [];
  if (!m || !NAME.test(m[1]!) || tags.length > MAX_STRIPES || tags.some((t) => !Number.isSafeInteger(t)) || new Set(tags).size !== tags.length) {
    throw new Error(`${where}: stripe descriptor "${desc}" is malformed (expected NAME:t0,t1,… with at most ${MAX_STRIPES} distinct tags)`);
  }
  return { name: m[1]!, tags };
}

/** A key of a striped list, taken apart; undefined for any other key. */
export function parseStripeKey(key: string): { vm: string; name: string; kind: 'v' | 'b'; version: number; tag: number } | undefined {
  const m = /^migsafe:\{([A-Za-z0-9][A-Za-z0-9._-]{0,63})\/([vb])([1-9]\d{0,15})((?:\.[a-z0-9]{1,16})?)\/(\d{1,9})\}:chunks$/.exec(key);
  if (!m || (m[2] === 'b') !== (m[4] !== '')) return undefined;
  return { vm: m[1]!, name: `${m[2]}${m[3]}${m[4]}`, kind: m[2] as 'v' | 'b', version: Number(m[3]), tag: Number(m[5]) };
}

/** Where frames first..last (inclusive) of a list of `count` stripes lie in stripe `s`: positions lo..hi (empty when hi < lo). */
export function stripeRange(s: number, count: number, first: number, last: number): { lo: number; hi: number } {
  return { lo: Math.max(0, Math.ceil((first - s) / count)), hi: Math.floor((last - s) / count) };
}

/** Frames a stripe must hold when the list holds `frames`. */
export function stripeShare(s: number, count: number, frames: number): number {
  return frames > s ? Math.ceil((frames - s) / count) : 0;
}

/** CRC16/XMODEM of the hash tag, mod 16384: Redis Cluster's key slot (cluster-spec). */
export function slotOfTag(tag: string): number {
  let crc = 0;
  for (const byte of Buffer.from(tag)) {
    crc ^= byte << 8;
    for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc % 16384;
}

/**
 * The stripes a new list gets: on a cluster, one per primary, each tag chosen so its slot is
 * that primary's now (a later re-shard moves slots, not correctness). Undefined on one Redis:
 * the list stays the classic single key in the VM's slot.
 */
export function pickStripes(redis: Redis, vm: string, name: string): Stripes | undefined {
  if (!isCluster(redis)) return undefined;
  const c = redis as unknown as Cluster;
  const owners = c.nodes('master').map((n) => `${n.options.host}:${n.options.port}`);
  if (owners.length < 2) return undefined;
  const tags: number[] = [];
  for (const owner of owners.slice(0, MAX_STRIPES)) {
    for (let t = 0; t < 1_000_000; t++) {
      if (tags.includes(t)) continue;
      if (c.slots[slotOfTag(`${vm}/${name}/${t}`)]?.[0] === owner) {
        tags.push(t);
        break;
      }
    }
  }
  return tags.length > 1 ? { name, tags } : undefined;
}

/** The first stripe of `keys` that does not hold its share of `frames` (LLEN of each), or undefined. */
export async function shortStripe(redis: Redis, keys: string[], frames: number): Promise<{ key: string; len: number; want: number } | undefined> {
  const lengths = await Promise.all(keys.map((k) => redis.llen(k)));
  const s = lengths.findIndex((len, i) => len !== stripeShare(i, keys.length, frames));
  return s < 0 ? undefined : { key: keys[s]!, len: lengths[s]!, want: stripeShare(s, keys.length, frames) };
}

/** Deletes keys that may lie in different slots (one DEL each; ioredis sends each to its node). */
export async function delAcrossSlots(redis: Redis, keys: string[]): Promise<number> {
  const n = await Promise.all(keys.map((k) => redis.del(k)));
  return n.reduce((a, b) => a + b, 0);
}

/** The keys of the stripes a stored descriptor names; none when it is absent or malformed (gc's business then). */
export function keysOfStripes(vm: string, desc: string | null | undefined): string[] {
  if (!desc) return [];
  try {
    return stripeKeys(vm, parseStripes(desc, `VM "${vm}"`));
  } catch {
    return [];
  }
}

/**
 * Deletes versions' data wherever it lies: their stripes (named in their metadata, which a
 * pending version gets at begin) first, then their keys in the VM's slot.
 */
export async function deleteVersions(redis: Redis, vm: string, versions: number[]): Promise<void> {
  if (versions.length === 0) return;
  const k = vmKeys(vm);
  const descs = await Promise.all(versions.map((v) => redis.hget(k.version(v), 'stripes')));
  await delAcrossSlots(redis, descs.flatMap((d) => keysOfStripes(vm, d)));
  const pipe = redis.pipeline();
  for (const v of versions) pipe.del(...k.versionAll(v));
  await pipe.exec();
}
