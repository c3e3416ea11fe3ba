// Where migsafe keeps its things, and how a command reaches the store.
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { CheckpointStore } from '../store/checkpoint-store.js';
import { connectRedis, ensureLocalRedis, pingExplained } from '../store/redis-server.js';
import { Metrics, serveMetrics } from '../util/metrics.js';
import { WriterLease } from '../ha/writer-lease.js';
import { describeDurability, parseDurability, settleDurability } from '../store/durability.js';
import { logger } from './log.js';
import { ensurePrivateDir } from '../util/private-dir.js';
import type { RedisAuth } from '../store/redis-url.js';
import { maskSecrets } from '../util/logger.js';

/** Where persistent state goes, not created (doctor only looks). */
export function stateDirPath(): string {
  return process.env.MIGSAFE_STATE_DIR || join(process.env.XDG_STATE_HOME || join(homedir(), '.local', 'state'), 'migsafe');
}

/** Where guest RAM files and QMP sockets go, not created. */
export function runDirPath(): string {
  return process.env.MIGSAFE_RUN_DIR || `/dev/shm/migsafe-${process.getuid?.() ?? 0}`;
}

/** Persistent state (the private Redis and its AOF): $MIGSAFE_STATE_DIR or ~/.local/state/migsafe. */
export function stateDir(): string {
  return ensurePrivateDir(stateDirPath(), '--state-dir (MIGSAFE_STATE_DIR)');
}

/** Guest RAM files, QMP sockets: tmpfs. $MIGSAFE_RUN_DIR or /dev/shm/migsafe-UID. */
export function runDir(): string {
  return ensurePrivateDir(runDirPath(), '--run-dir (MIGSAFE_RUN_DIR)');
}

export interface StoreHandle {
  redis: Redis;
  store: CheckpointStore;
  url: string;
  /** The URL as it may be printed: its password masked. */
  where: string;
  auth?: RedisAuth;
  /** migsafe's own redis-server (no --redis): migsafe may configure it. */
  own: boolean;
  close(): void;
}

/** Connects to --redis, or to migsafe's private redis-server (started if it is not running). */
export async function openRedis(redisUrl: string | undefined, retry = false, auth?: RedisAuth): Promise<Omit<StoreHandle, 'store'>> {
  const url = redisUrl ?? (await ensureLocalRedis(stateDir()));
  const where = maskSecrets(url);
  const redis = connectRedis(url, { retry, auth });
  try {
    await pingExplained(redis, where);
  } catch (e) {
    redis.disconnect();
    throw e;
  }
  return { redis, url, where, auth, own: redisUrl === undefined, close: () => redis.disconnect() };
}

/** The store of one VM on --redis (openRedis). */
export async function openStore(redisUrl: string | undefined, vm: string, retry = false, auth?: RedisAuth): Promise<StoreHandle> {
  const h = await openRedis(redisUrl, retry, auth);
  return { ...h, store: new CheckpointStore(h.redis, vm) };
}

export function fmtBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

export interface MetricsHandle {
  /** Undefined without --metrics: nothing is counted. */
  metrics?: Metrics;
  close(): Promise<void>;
}

/** Starts the `--metrics ADDR:PORT` endpoint, if asked for, and says where it is. */
export async function openMetrics(listen: string | undefined): Promise<MetricsHandle> {
  if (listen === undefined) return { close: async () => {} };
  const metrics = new Metrics();
  const server = await serveMetrics(metrics, listen);
  logger.info({ url: server.url }, `metrics at ${server.url}`);
  return { metrics, close: () => server.close() };
}

/**
 * Takes the VM's lease on a connection of its own and fences the store's commits with it
 * (src/ha/writer-lease.ts); `waitMs`: how long to wait for another holder's lease to expire.
 */
export async function takeWriterLease(h: StoreHandle, ttlMs: number, waitMs = 0): Promise<WriterLease & { close(): Promise<void> }> {
  const redis = connectRedis(h.url, { retry: true, auth: h.auth });
  try {
    const w = await WriterLease.take({ redis, store: h.store, ttlMs, waitMs, log: logger.child({ vm: h.store.vmId }) });
    return Object.assign(w, {
      close: async () => {
        await w.release().catch(() => {});
        redis.disconnect();
      },
    });
  } catch (e) {
    redis.disconnect();
    throw e;
  }
}

/** Settles `--durability` with the server (refusing what it cannot honour) and says what it means. */
export async function applyDurability(h: StoreHandle, spec: string): Promise<void> {
  const d = await settleDurability(h.redis, parseDurability(spec), h.own, h.where);
  h.store.setDurability(d);
  logger.info({ vm: h.store.vmId, durability: d.kind }, `commits count when ${describeDurability(d)}`);
}
