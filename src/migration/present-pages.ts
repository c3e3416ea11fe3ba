// RIC's dirty source on stock QEMU during post-copy.
//
// At the destination, guest RAM is a shmem file in which pages not yet received from the
// source are HOLES. Reading a hole through a mapping would allocate a zero page in the page
// cache, and QEMU's UFFDIO_COPY for that page would then fail (or the guest would see zeros):
// so we never touch a hole. lseek(SEEK_DATA/SEEK_HOLE) on the RAM file lists the pages that
// are present (received, or written by the guest at the destination); those, and only those,
// are candidates, and the encoder compares them with the shadow (which starts as the final
// FIC image — exactly what the destination started from). A present page that differs from
// the shadow was dirtied at the destination. Holes keep the shadow's content, which is what
// the source will send for them.
//
// Node has no SEEK_DATA, so a 40-line C helper does the walk; it is compiled with the system
// C compiler on first use and cached. When the patched QEMU's bitmap source is available
// (qemu-patches/), it replaces this class behind the same DirtySource interface.
import { execFileSync, execFile } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync, renameSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { promisify } from 'node:util';
import type { DirtySource, DirtySourceKind } from '../qemu/dirty-source.js';

const execFileP = promisify(execFile);

const HELPER_C = String.raw`
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
/* Writes the indexes of the 4 KiB pages of FILE that hold data (not holes), u32 LE, to stdout. */
int main(int argc, char **argv) {
  if (argc != 2) { fprintf(stderr, "usage: %s FILE\n", argv[0]); return 2; }
  int fd = open(argv[1], O_RDONLY);
  if (fd < 0) { perror(argv[1]); return 1; }
  off_t end = lseek(fd, 0, SEEK_END);
  static uint32_t buf[65536];
  size_t n = 0;
  off_t pos = 0;
  while (pos < end) {
    off_t d = lseek(fd, pos, SEEK_DATA);
    if (d < 0) break;
    off_t h = lseek(fd, d, SEEK_HOLE);
    if (h < 0) h = end;
    for (off_t p = d & ~(off_t)4095; p < h; p += 4096) {
      buf[n++] = (uint32_t)(p >> 12);
      if (n == 65536) { fwrite(buf, 4, n, stdout); n = 0; }
    }
    pos = h;
  }
  if (n) fwrite(buf, 4, n, stdout);
  return 0;
}
`;

let helperPath: string | undefined;

/** Path of the compiled helper (compiles it once per machine and source version). */
export function presentPagesHelper(): string {
  if (helperPath) return helperPath;
  const hash = createHash('sha256').update(HELPER_C).digest('hex').slice(0, 12);
  const dir = join(process.env.MIGSAFE_STATE_DIR || tmpdir(), 'migsafe-helpers');
  const bin = join(dir, `present-pages-${hash}`);
  if (!existsSync(bin)) {
    mkdirSync(dir, { recursive: true });
    const src = `${bin}.${process.pid}.c`;
    writeFileSync(src, HELPER_C);
    try {
      execFileSync('cc', ['-O2', '-o', `${bin}.${process.pid}`, src], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (e) {
      throw new Error(`cannot compile the SEEK_DATA helper with cc (install gcc): ${(e as Error).message}`);
    }
    renameSync(`${bin}.${process.pid}`, bin);
  }
  helperPath = bin;
  return bin;
}

/** Indexes of the pages of `file` that are not holes. */
export async function presentPages(file: string): Promise<Uint32Array> {
  const { stdout } = await execFileP(presentPagesHelper(), [file], { encoding: 'buffer', maxBuffer: 1 << 30 });
  const b = stdout as Buffer;
  const out = new Uint32Array(b.length >> 2);
  for (let i = 0; i < out.length; i++) out[i] = b.readUInt32LE(i * 4);
  return out;
}

/**
 * Post-copy destination: candidates are the present pages of the RAM file. Once the migration
 * has completed (every page present) `allPresent()` switches it to a full scan.
 */
export class PresentPagesDirtySource implements DirtySource {
  private full = false;
  constructor(private readonly ramPath: string) {}

  get kind(): DirtySourceKind {
    return 'scan';
  }

  allPresent(): void {
    this.full = true;
  }

  async harvest(): Promise<Uint32Array | null> {
    if (this.full) return null;
    return presentPages(this.ramPath);
  }

  async close(): Promise<void> {}
}
