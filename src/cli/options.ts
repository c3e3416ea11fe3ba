// Options shared by the verbs that checkpoint a VM. Their values are checked, for every command
// that has them, by validate.ts (the parser runs it): not here.
import type { Argv } from 'yargs';
import { parseCodec } from '../store/frame.js';
import { checkUserArgv, ramBytesFromArgv } from '../qemu/launch.js';
import type { LoopSettings } from './checkpoint-loop.js';
import { withRedisAuth, type RedisAuthArgs } from './redis-auth.js';
import { withRecordKey, type RecordKeyArgs } from './record-key.js';

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
    .option('vm', { type: 'string', demandOption: true, describe: 'VM id (letters, digits, . _ -)' });
}

/** `--durability`: the writers', the agent's and `doctor`'s (which checks the store can honour it). */
export function withDurability<T>(y: Argv<T>) {
  return y
    .option('durability', {
      type: 'string',
      default: 'auto',
      describe: 'when a commit counts: fsync (appendfsync always), replicas:N[:MS] (WAIT), none; auto: fsync where the server does it',
    });
}

/** `--durability`, `--metrics` and `--record-key`: the writers' (withCheckpointing) and the agent's. */
export function withOperatorOptions<T>(y: Argv<T>) {
  return withRecordKey(withDurability(y))
    .option('metrics', {
      type: 'string',
      describe: 'serve Prometheus metrics at http://ADDR:PORT/metrics (port 0: any free port)',
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
    });
}

export interface CheckpointArgs extends RedisAuthArgs, RecordKeyArgs {
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

/**
 * The QEMU command line after `--`, at parse time: `run` needs one (checked as it will be
 * started), `recover` takes none (the recorded one is used).
 */
export function checkQemuArgv(args: object, wanted: boolean, verb: string): true {
  const rest = (args as { '--'?: unknown })['--'];
  const argv = Array.isArray(rest) ? rest.map(String) : [];
  if (wanted) {
    checkUserArgv(argv);
    ramBytesFromArgv(argv);
  } else if (argv.length) {
    throw new Error(`migsafe ${verb} takes no QEMU command line (it starts the one recorded with the checkpoints): leave out \`-- ${argv.slice(0, 2).join(' ')}...\``);
  }
  return true;
}
