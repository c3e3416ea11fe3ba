// One agent, many VMs: their stage-2 pauses take turns, so that two guests are never stopped
// at once by this host (each pause is short; overlapping ones would share the CPU and the store
// and each last longer). First come, first served.
export class PauseTurns {
  private tail: Promise<void> = Promise.resolve();

  /** Waits for this caller's turn; call the returned function when the pause is over. */
  async take(): Promise<() => void> {
    let done!: () => void;
    const mine = new Promise<void>((r) => (done = r));
    const before = this.tail;
    this.tail = before.then(() => mine);
    await before;
    return done;
  }
}
