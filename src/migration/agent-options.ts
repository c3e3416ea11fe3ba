// What an agent is told at start (the CLI's `agent` options, settled): the host's services
// (VmHost) and every VM's loops read it.
import type { RedisAuth } from '../store/redis-url.js';
import type { CodecChoice } from '../store/frame.js';
import type { DurabilityChoice } from '../store/durability.js';
import type { TlsConfig } from '../ha/tls.js';
import type { Metrics } from '../util/metrics.js';
import type { Logger } from '../util/logger.js';
import type { ProgressListener } from '../util/progress.js';

export interface AgentOptions {
  host: string;
  listen: string;
  redis: string;
  /** Credentials and TLS material for `redis` besides the URL's. */
  redisAuth?: RedisAuth;
  runDir: string;
  intervalMs: number;
  maxPages: number;
  maxTimeMs: number;
  codec: CodecChoice;
  /** FIC bandwidth budget, bytes/s (0: none). */
  ficBandwidth: number;
  /** Fold old versions into the base once more than 2×K are stored (0: never). */
  compactEvery?: number;
  ricIntervalMs: number;
  ricEvent: boolean;
  /**
   * RIC: also start a round once this many pages were dirtied since the last harvest (0: off).
   * Needs the patched QEMU's dirty count (bitmap source); without it rounds are periodic and on packets.
   */
  ricDirtyPages?: number;
  /** Dirty pages from the patched QEMU's bitmap (`auto`: when the QEMU binary has migsafe-ft). */
  dirtySource?: 'auto' | 'bitmap' | 'scan';
  hbIntervalMs: number;
  hbTimeoutMs: number;
  leaseTtlMs: number;
  /** Output commit through the gate (default on). */
  gate: boolean;
  /** A UDP port of this host whose datagrams the gate passes into the guest at that address, same port. */
  gateIn?: { guestIp: string; port: number };
  /** Turn checkpointing off (benchmark baseline). */
  noCheckpoint?: boolean;
  statusFile?: string;
  /** When a commit counts (default auto: fsync where the server does it, else none). */
  durability?: DurabilityChoice;
  /** Where `--metrics` figures go: rounds, recoveries, the gate, the leases. */
  metrics?: Metrics;
  /** Mutual TLS on the control channel (src/ha/tls.ts); without it, loopback only. */
  tls?: TlsConfig;
  /** `--record-key`: VM records are signed with it, and QEMU starts only from one that verifies (store/record-mac.ts). */
  recordKey?: Buffer;
  /** The agent's logger (its lines carry `host`); each VM's lines carry `vm` as well. */
  log: Logger;
  /** Where a VM's progress goes (full checkpoints, compactions, outgoing migrations), given the VM's logger. */
  progress?: (log: Logger) => ProgressListener;
}
