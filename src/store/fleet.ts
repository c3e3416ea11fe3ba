// Every VM a store holds, seen from the store alone (`migsafe status`), and what none of them
// references any more (`migsafe gc`): versions a dead writer left pending, keys of versions
// that are neither committed nor pending, a compaction's unfinished base, and the keys of a VM
// whose record is gone (a delete cut short).
//
// The rule that makes gc safe beside running writers: every writer holds the VM's lease, so gc
// touches only VMs whose lease key is absent, and its DEL runs in one script that checks that
// again (a VM's keys share one hash tag: one slot, one script, also on a cluster).
import type { Redis } from 'ioredis';
import { CheckpointStore } from './checkpoint-store.js';
import { vmKeys } from './keys.js';
import { LeaseStore } from './lease-store.js';
import { scanKeys } from './redis-cluster.js';
import { delAcrossSlots, parseStripeKey, parseStripes } from './stripes.js';

/** The id in a key of our layout (`migsafe:{id}:...`, or a stripe `migsafe:{id/...}:chunks`), or undefined. */
export function vmIdOfKey(key: string): string | undefined {
  const m = /^migsafe:\{([A-Za-z0-9][A-Za-z0-9._-]{0,63})\}:/.exec(key);
  return m?.[1] ?? parseStripeKey(key)?.vm;
}

/** Every key of the store under our prefix, by VM id (every primary of a cluster). */
export async function keysByVm(redis: Redis): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  for (const k of await scanKeys(redis, 'migsafe:{*}:*')) {
    const id = vmIdOfKey(k);
    if (!id) continue;
    let l = out.get(id);
    if (!l) out.set(id, (l = []));
    l.push(k);
  }
  return out;
}

export interface VmSummary {
  vm: string;
  /** 'ok', 'missing' (keys without a record: a delete cut short), or what is malformed. */
  record: string;
  ramBytes: number | null;
  versions: number;
  head: number;
  /** When the newest version was committed (ms since the epoch), and how long ago. */
  headAt: number | null;
  ageMs: number | null;
  base: number;
  /** What the committed versions hold in the store (their frames, device state included). */
  bytesStored: number;
  /** The newest version's pause of the guest, and its page count. */
  lastPauseMs: number | null;
  lastPages: number | null;
  pending: number;
  /** The lease: who holds it and for how much longer; null when nobody does. */
  owner: { host: string; token: number; ttlMs: number } | null;
  /** Where the agent that runs it listens (as it published), null if none did. */
  agent: string | null;
  keys: number;
}

export async function summarize(redis: Redis, vm: string, keys: string[], now = Date.now()): Promise<VmSummary> {
  const store = new CheckpointStore(redis, vm);
  const k = vmKeys(vm);
  let record = 'ok';
  let ramBytes: number | null = null;
  try {
    const rec = await store.vm();
    if (rec) ramBytes = rec.ramBytes;
    else record = 'missing';
  } catch (e) {
    record = (e as Error).message;
  }
  let metas: Awaited<ReturnType<CheckpointStore['metas']>> = [];
  try {
    metas = await store.metas();
  } catch (e) {
    if (record === 'ok') record = (e as Error).message;
  }
  const last = metas[metas.length - 1];
  const [holder, agent, pending, base] = await Promise.all([
    new LeaseStore(redis, vm).holder(),
    store.agentAddress(),
    redis.scard(k.pending),
    store.base().catch(() => 0),
  ]);
  return {
    vm,
    record,
    ramBytes,
    versions: metas.length,
    head: last?.version ?? 0,
    headAt: last?.committedAt ?? null,
    ageMs: last ? Math.max(0, now - last.committedAt) : null,
    base,
    bytesStored: metas.reduce((s, m) => s + m.bytesStored + (m.deviceStateStored ?? 0), 0),
    lastPauseMs: last?.pauseMs ?? null,
    lastPages: last?.pages ?? null,
    pending,
    owner: holder ? { host: holder.host, token: holder.token, ttlMs: holder.ttlMs } : null,
    agent,
    keys: keys.length,
  };
}

export interface Garbage {
  vm: string;
  /** Keys to delete, each with why. */
  keys: { key: string; why: string }[];
  /** Pending versions to forget (members of the pending set). */
  pending: number[];
  /** Why nothing of this VM may be touched now (its lease is held), else undefined. */
  skipped?: string;
}

/** What of one VM nothing references. Reads only. */
export async function findGarbage(redis: Redis, vm: string, keys: string[]): Promise<Garbage> {
  const k = vmKeys(vm);
  const holder = await new LeaseStore(redis, vm).holder();
  if (holder) return { vm, keys: [], pending: [], skipped: `its lease is held by ${holder.host} (token ${holder.token}): a writer may be at work` };
  const store = new CheckpointStore(redis, vm);
  if (!(await store.exists())) {
    // Keys of a VM without its record: no reader can use them.
    return { vm, keys: keys.map((key) => ({ key, why: 'the VM has no record (a delete cut short)' })), pending: [] };
  }
  const committed = new Set((await redis.zrange(k.committed, 0, -1)).map(Number));
  const pending = (await redis.smembers(k.pending)).map(Number).filter((n) => Number.isSafeInteger(n) && n > 0);
  const pendingSet = new Set(pending);
  const base = await redis.get(k.base);
  const hasBase = base !== null;
  let baseStripes: string | undefined;
  try {
    const d = base === null ? null : await redis.hget(k.version(Number(base)), 'baseStripes');
    baseStripes = d ? parseStripes(d, vm).name : undefined;
  } catch {
    baseStripes = undefined; // malformed: then no stripe is the base's, and the reader refuses the base anyway
  }
  const out: Garbage['keys'] = [];
  for (const key of keys) {
    const st = parseStripeKey(key);
    if (st) {
      if (st.kind === 'v') {
        if (pendingSet.has(st.version)) out.push({ key, why: `version ${st.version} was left pending by a writer that is gone` });
        else if (!committed.has(st.version)) out.push({ key, why: `version ${st.version} is neither committed nor pending` });
      } else if (st.name !== baseStripes) {
        out.push({ key, why: `a base image no version names (${st.name}: a compaction that did not finish, or an old base)` });
      }
      continue;
    }
    const rest = key.slice(k.prefix.length);
    const v = /^v:(\d+)(?::chunks|:device|:index)?$/.exec(rest);
    if (v) {
      const n = Number(v[1]);
      if (pendingSet.has(n)) out.push({ key, why: `version ${n} was left pending by a writer that is gone` });
      else if (!committed.has(n)) out.push({ key, why: `version ${n} is neither committed nor pending` });
      continue;
    }
    if (/^base:(?:chunks|index):new:\d+$/.test(rest)) out.push({ key, why: 'a compaction that did not finish' });
    else if ((rest === 'base:chunks' || rest === 'base:index') && !hasBase) out.push({ key, why: 'a base image no version names' });
  }
  return { vm, keys: out, pending };
}

// Deletes the keys and forgets the pending versions only while the lease is still free.
const COLLECT_LUA = `
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local n = 0
for i = 3, #KEYS do n = n + redis.call('DEL', KEYS[i]) end
for i = 1, #ARGV do redis.call('SREM', KEYS[2], ARGV[i]) end
return n
`;

/** Removes what findGarbage found. -1: a writer took the lease meanwhile, nothing was removed. */
export async function collectGarbage(redis: Redis, g: Garbage): Promise<number> {
  if (g.skipped || (g.keys.length === 0 && g.pending.length === 0)) return 0;
  const k = vmKeys(g.vm);
  // Stripes lie in other slots, out of the script's reach: removed once it has seen the lease
  // free. Safe: a new writer never reuses them (new versions get new numbers, a base a new name).
  const striped = g.keys.filter((x) => parseStripeKey(x.key)).map((x) => x.key);
  const keys = [k.owner, k.pending, ...g.keys.filter((x) => !parseStripeKey(x.key)).map((x) => x.key)];
  const n = (await redis.eval(COLLECT_LUA, keys.length, ...keys, ...g.pending.map(String))) as number;
  if (n < 0) return n;
  return n + (await delAcrossSlots(redis, striped));
}
