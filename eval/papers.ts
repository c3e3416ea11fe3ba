// The seed papers' own figures, as their text states them (../shared/seeds). Values read off a
// plot that the text does not state are not here: a row without a paper value says "—".

/** Thesis (000_569bf0e43151977c.txt), "Experiments - Byte Level Granularity Approach" and "Compression Integration". B/page. */
export const PAPER_E1 = {
  idle: { raw: 4096, delta: 47.41, gzip: 877.47, lz4: 1159.11, zstd: 2046.6 },
  wset: { raw: 4096, delta: 54.47, gzip: 957.49, lz4: 1255.94, zstd: 1926.2 },
};

/** V-Recover (002_4c1f21573483bc1e.txt) §4.1.1, Fig. 4 and 7: FIC overhead on total migration time, %. */
export const PAPER_E2 = {
  writeIntensivePostcopy: { low: 1, high: 4 },
  idlePostcopy: { low: 0.2, high: 0.7 },
  concurrentIdle: { low: 0.3, high: 1 },
  concurrentWrite: { low: 0.4, high: 1.9 },
  downtimeWithMs: { low: 7.5, high: 11.7 },
  downtimeWithoutMs: { low: 7, high: 11.6 },
};

/** V-Recover §4.1.3, Fig. 8: FIC recovery time of an idle VM vs its size (the text: ~3 s at 1 GB, ~10 s at 8 GB). */
export const PAPER_E4: { memMiB: number; recoveryMs: number }[] = [
  { memMiB: 1024, recoveryMs: 3000 },
  { memMiB: 8192, recoveryMs: 10000 },
];

/** V-Recover §4.2, Fig. 10: RIC cumulative downtime at a 100 µs interval, ms. */
export const PAPER_E5 = {
  idle: { low: 1100, high: 1900 },
  writeIntensive: { low: 1800, high: 2200 },
  postcopyDowntimeMs: { low: 9, high: 11.6 },
  intervalMs: 0.1,
};

/** V-Recover §4.2, Fig. 17: RIC recovery time vs checkpoint size (~200 ms at 20 000 pages). */
export const PAPER_E7 = { pages: 20000, recoveryMs: 200 };

/**
 * V-Recover §4.2.4, Fig. 13–15: packet buffering and release with RIC. The text states no
 * number for these figures, only how the series compare; these are its words.
 */
export const PAPER_E8 = {
  setting: 'YCSB (50/50 read/update over 1 GB) in the migrating VM against Redis on an external host (Fig. 13, 14); a MySQL server in the VM queried by Sysbench OLTP from an external host, response time averaged over 50 s (Fig. 15); KVM, 1 Gbit/s',
  throughput: 'event-based checkpointing has more consistent throughput [...] than continuous checkpointing (Fig. 13); a sudden drop at downtime',
  latency: 'event-based checkpointing has [...] lower latency degradation than continuous checkpointing (Fig. 14); during the downtime [...] an increase in latency',
  responseTime: 'during live migration, event-based checkpointing has lower average response time compared to continuous checkpointing. Once the migration completes, both response times gradually converge to that of vanilla post-copy (Fig. 15)',
};
