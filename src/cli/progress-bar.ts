// A one-line progress bar on a terminal; silent when stderr is not a TTY.
export class ProgressBar {
  private last = 0;
  constructor(private readonly label: string) {}

  update(done: number, total: number): void {
    if (!process.stderr.isTTY) return;
    const now = Date.now();
    if (done < total && now - this.last < 100) return;
    this.last = now;
    const width = 30;
    const frac = total ? done / total : 1;
    const fill = Math.round(frac * width);
    process.stderr.write(`\r${this.label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${done}/${total}`);
    if (done >= total) process.stderr.write('\n');
  }
}
