// What the checkpoint loop needs of an output gate: a port, so that the loop names no gate.

/**
 * Output commit (src/ha/gate.ts's OutputGate): frames the guest sent up to a mark are
 * released once the round that explains them has committed.
 */
export interface CheckpointGate {
  /** Everything the guest sent so far belongs to the state being checkpointed. */
  mark(): number;
  /** Releases the frames held up to `mark`, each one's hold time (s) to `onHeld`; returns how many. */
  release(mark: number, onHeld?: (seconds: number) => void): number;
  /** Frames held now. */
  readonly pending: number;
  /** 'frame': a frame was held. */
  on(event: 'frame', listener: () => void): unknown;
}
