// What `run`, `attach` and `recover` share as writers of a VM's checkpoints: the metrics
// endpoint, the store, the VM's lease (taken before anything in the store is touched: another
// writer's pending versions must not be cleaned up under it) and the durability policy —
// opened in that order, closed in the reverse one.
import { applyDurability, openMetrics, openStore, takeWriterLease, type StoreHandle } from './context.js';
import { loopSettings, type CheckpointArgs } from './options.js';
import { redisAuthFrom } from './redis-auth.js';
import { applyRecordKey } from './record-key.js';
import type { CheckpointLoopOptions, LoopSettings } from './checkpoint-loop.js';

export interface Writer {
  h: StoreHandle;
  /** The checkpoint loop's settings from the command line, its metrics and its lease. */
  loop: LoopSettings & Pick<CheckpointLoopOptions, 'metrics' | 'lease'>;
}

export interface WriterOptions {
  /** Keep reconnecting to the store (long-running commands). */
  retry: boolean;
  /** Wait this long for another writer's lease to run out (recover: a killed writer's). */
  leaseWaitMs?: number;
  /** Checks on the store made before the lease is taken (their refusal changes nothing). */
  before?: (h: StoreHandle) => Promise<void>;
}

/** Opens what a writer needs, runs `body`, and closes it all whatever happens. */
export async function asWriter<T>(a: CheckpointArgs, o: WriterOptions, body: (w: Writer) => Promise<T>): Promise<T> {
  const m = await openMetrics(a.metrics);
  let h: StoreHandle | undefined;
  let lease: Awaited<ReturnType<typeof takeWriterLease>> | undefined;
  try {
    h = await openStore(a.redis, a.vm, o.retry, redisAuthFrom(a));
    applyRecordKey(h.store, a);
    await o.before?.(h);
    lease = await takeWriterLease(h, a['lease-ttl'], o.leaseWaitMs);
    await applyDurability(h, a.durability);
    return await body({ h, loop: { ...loopSettings(a), metrics: m.metrics, lease } });
  } finally {
    await lease?.close();
    h?.close();
    await m.close();
  }
}
