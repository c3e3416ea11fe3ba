// What a long operation reports as it goes (a full checkpoint, a compaction, reading a
// checkpoint, a recovery's steps, a migration): the CLI turns it into a bar on a terminal, or
// occasional log lines.
export interface WorkProgress {
  /** What is being done. */
  op: 'full-checkpoint' | 'compaction' | 'read-checkpoint' | 'recovery' | 'migration';
  /** Units done so far and in all (`unit`: what they count). */
  done: number;
  total: number;
  unit: 'pages' | 'frames' | 'bytes' | 'steps';
  /** The checkpoint version it concerns, if any. */
  version?: number;
  /** Where the operation is: a recovery's step (RECOVERY_STEPS), a migration's QEMU status (active, postcopy-active, ...). */
  phase?: string;
  /** A migration: pages the guest dirties per second (QEMU's dirty-pages-rate). */
  dirtyRate?: number;
  /** The last report of this operation (it ended: done may be short of total if it stopped early). */
  finished?: boolean;
}

/** A recovery after its checkpoint is read (that read reports as 'read-checkpoint'): one step each. */
export const RECOVERY_STEPS = ['writing the RAM file', 'starting QEMU', 'loading the device state', 'resumed'] as const;

export type ProgressListener = (p: WorkProgress) => void;
