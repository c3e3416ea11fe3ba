// What a long operation reports as it goes (a full checkpoint, a compaction, reading a
// checkpoint, a migration): the CLI turns it into a bar on a terminal, or occasional log lines.
export interface WorkProgress {
  /** What is being done. */
  op: 'full-checkpoint' | 'compaction' | 'read-checkpoint' | 'migration';
  /** Units done so far and in all (`unit`: what they count). */
  done: number;
  total: number;
  unit: 'pages' | 'frames' | 'bytes';
  /** The checkpoint version it concerns, if any. */
  version?: number;
  /** The last report of this operation (it ended: done may be short of total if it stopped early). */
  finished?: boolean;
}

export type ProgressListener = (p: WorkProgress) => void;
