// Small helpers of every benchmark: progress notes on stderr, medians and percentiles.

export function note(s: string): void {
  process.stderr.write(`${s}\n`);
}

export function median(xs: number[]): number {
  return percentile(xs, 0.5);
}

/** The value at fraction `p` of the sorted values (0.5: the median, 0.95: p95). */
export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(s.length * p))]! : NaN;
}
