// Test helper: the real guest page pairs (8192-byte records: old page, new page).
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

/** Corpus directory: $MIGSAFE_CORPUS, else ../shared/corpus next to the repository. */
export function corpusDir(): string | undefined {
  const candidates = [
    process.env.MIGSAFE_CORPUS,
    resolve(here, '../../../../shared/corpus'), // dist/test/unit -> repo/.. 
    resolve(here, '../../../shared/corpus'), // test/unit (run from source)
    '/work/shared/corpus',
  ];
  return candidates.find((d) => d && existsSync(join(d, 'kv.pairs')));
}

export const CORPUS_FILES = ['idle', 'wset', 'kv', 'qsort'] as const;

export function loadPairs(name: string): Buffer {
  const dir = corpusDir();
  if (!dir) throw new Error('corpus not found: set MIGSAFE_CORPUS');
  return readFileSync(join(dir, `${name}.pairs`));
}

export function pair(buf: Buffer, i: number): [Buffer, Buffer] {
  return [buf.subarray(i * 8192, i * 8192 + 4096), buf.subarray(i * 8192 + 4096, i * 8192 + 8192)];
}

/** Deterministic PRNG (xorshift32) so failures reproduce. */
export function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}
