// Options shared by the verbs that checkpoint a VM.
import type { Argv } from 'yargs';
import { parseCodec } from '../store/frame.js';
import { checkVmId } from '../store/keys.js';
import { parseListen } from '../util/metrics.js';
import { parseDurability } from '../store/durability.js';
import type { LoopSettings } from './checkpoint-loop.js';
import { withRedisAuth, type RedisAuthArgs } from './redis-auth.js';

/** What every `--redis` accepts (src/store/redis-url.ts). */
export const REDIS_FORMS = 'redis://HOST:PORT[/DB], rediss://..., a unix socket path, redis+sentinel://HOST:PORT,HOST:PORT/NAME (a primary found and followed through Sentinel), or redis+cluster://HOST:PORT,HOST:PORT (a Redis Cluster)';

/** `--redis`, alone: `doctor` checks a store without naming a VM. */
export function withRedis<T>(y: Argv<T>) {
  return y.option('redis', {
    type: 'string',
    describe: `the checkpoint store: ${REDIS_FORMS} (a password in it is masked in logs and in ps; better: --redis-password-file); default: migsafe's own redis-server`,
  });
}

export function withStore<T>(y: Argv<T>) {
  return withRedisAuth(withRedis(y))
    .option('vm', { type: 'string', demandOption: true, describe: 'VM id (letters, digits, . _ -)' })
    .check((a) => {
      checkVmId(String((a as { vm: string }).vm));
      return true;
    });
}

/** `--durability`: the writers', the agent's and `doctor`'s (which checks the store can honour it). */
export function withDurability<T>(y: Argv<T>) {
  return y
    .option('durability', {
      type: 'string',
      default: 'auto',
      describe: 'when a commit counts: fsync (appendfsync always), replicas:N[:MS] (WAIT), none; auto: fsync where the server does it',
    })
    .check((a) => {
      parseDurability(String((a as unknown as { durability: string }).durability));
      return true;
    });
}

/** `--durability` and `--metrics`: the writers' (withCheckpointing) and the agent's. */
export function withOperatorOptions<T>(y: Argv<T>) {
  return withDurability(y)
    .option('metrics', {
      type: 'string',
      describe: 'serve Prometheus metrics at http://ADDR:PORT/metrics (port 0: any free port)',
    })
    .check((a) => {
      const o = a as unknown as { metrics?: string };
      if (o.metrics !== undefined) parseListen(String(o.metrics));
      return true;
    });
}

export function withCheckpointing<T>(y: Argv<T>) {
  return withOperatorOptions(y)
    .option('interval', { type: 'number', default: 1000, describe: 'I: ms between the starts of two rounds' })
    .option('max-pages', { type: 'number', default: 0, describe: 'N: most pages sent live per round (0: no bound)' })
    .option('max-time', { type: 'number', default: 0, describe: 'T: longest live stage of a round, ms (0: no bound)' })
    .option('codec', {
      type: 'string',
      default: 'zstd:1',
      describe: 'compression of page records: none, gzip[:level], lz4, zstd[:level]',
    })
    .option('threads', { type: 'number', default: 1, describe: 'encoder threads' })
    .option('dirty-source', {
      choices: ['auto', 'bitmap', 'scan'] as const,
      default: 'auto' as const,
      describe: "where dirty pages come from: the patched QEMU's dirty bitmap, or a compare of all RAM (auto: bitmap when QEMU has it)",
    })
    .option('lease-ttl', {
      type: 'number',
      default: 3000,
      describe: "the VM's lease in the store, ms: one writer per VM id, the others' commits are refused",
    })
    .option('compact-every', {
      type: 'number',
      default: 20,
      describe: 'fold old versions into the base once more than 2×K are stored (0: never)',
    })
    .check((a) => {
      const o = a as unknown as Record<string, number | string>;
      parseCodec(String(o.codec));
      for (const k of ['interval', 'max-pages', 'max-time', 'threads', 'compact-every', 'lease-ttl']) {
        const v = Number(o[k]);
        if (!Number.isInteger(v) || v < 0) throw new Error(`--${k} must be a whole number ≥ 0 (got ${o[k]})`);
      }
      if (Number(o.threads) < 1) throw new Error('--threads must be at least 1');
      if (Number(o.interval) < 10) throw new Error('--interval must be at least 10 ms');
      if (Number(o['lease-ttl']) < 500) throw new Error('--lease-ttl must be at least 500 ms');
      return true;
    });
}

export interface CheckpointArgs extends RedisAuthArgs {
  vm: string;
  interval: number;
  'max-pages': number;
  'max-time': number;
  codec: string;
  threads: number;
  'compact-every': number;
  'dirty-source': 'auto' | 'bitmap' | 'scan';
  metrics?: string;
  'lease-ttl': number;
  durability: string;
}

export function loopSettings(a: CheckpointArgs): LoopSettings {
  return {
    intervalMs: a.interval,
    maxPages: a['max-pages'],
    maxTimeMs: a['max-time'],
    codec: parseCodec(a.codec),
    threads: a.threads,
    compactEvery: a['compact-every'],
  };
}
