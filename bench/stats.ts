/**
 * Small statistics of the bench: quantiles of latency samples and rounding for tables.
 */

/** The value at quantile q (0..1) of a sorted array (nearest rank). */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

export const round = (n: number, digits = 1): number => (Number.isFinite(n) ? Math.round(n * 10 ** digits) / 10 ** digits : n);

export interface Summary { n: number; p50Ms: number; p90Ms: number; p99Ms: number; maxMs: number; meanMs: number }

/** p50/p90/p99/max/mean of latency samples in ms (the array is sorted in place). */
export function summarize(samples: number[]): Summary {
  samples.sort((a, b) => a - b);
  const mean = samples.reduce((a, b) => a + b, 0) / Math.max(1, samples.length);
  return {
    n: samples.length, p50Ms: quantile(samples, 0.5), p90Ms: quantile(samples, 0.9), p99Ms: quantile(samples, 0.99),
    maxMs: samples.at(-1) ?? NaN, meanMs: samples.length ? mean : NaN,
  };
}
