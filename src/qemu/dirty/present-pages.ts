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
import { execFileSync, execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync, renameSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { promisify } from 'node:util';
import type { DirtySource, HarvestRequest } from './source.js';

const execFileP = promisify(execFile);

const HELPER_C = String.raw`
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* Indexes of the 4 KiB pages of a file that hold data (not holes), as u32 LE.
   present FILE          : once: the indexes, to stdout
   present --serve FILE  : for every line read on stdin: u32 count, then the indexes */
static uint32_t *pages;
static size_t n, cap;
static void walk(int fd) {
  off_t end = lseek(fd, 0, SEEK_END), pos = 0;
  n = 0;
  while (pos < end) {
    off_t d = lseek(fd, pos, SEEK_DATA);
    if (d < 0) break;
    off_t h = lseek(fd, d, SEEK_HOLE);
    if (h < 0) h = end;
    for (off_t p = d & ~(off_t)4095; p < h; p += 4096) {
      if (n == cap) { cap = cap ? cap * 2 : 65536; pages = realloc(pages, cap * 4); if (!pages) exit(3); }
      pages[n++] = (uint32_t)(p >> 12);
    }
    pos = h;
  }
}
int main(int argc, char **argv) {
  int serve = argc == 3 && strcmp(argv[1], "--serve") == 0;
  if (argc != 2 && !serve) { fprintf(stderr, "usage: %s [--serve] FILE\n", argv[0]); return 2; }
  int fd = open(argv[argc - 1], O_RDONLY);
  if (fd < 0) { perror(argv[argc - 1]); return 1; }
  if (!serve) { walk(fd); fwrite(pages, 4, n, stdout); return 0; }
  char line[64];
  while (fgets(line, sizeof line, stdin)) {
    walk(fd);
    uint32_t count = (uint32_t)n;
    fwrite(&count, 4, 1, stdout);
    fwrite(pages, 4, n, stdout);
    fflush(stdout);
  }
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

/** The helper kept running: a harvest is one line written and one reply read (no fork/exec
 * while a RIC round's stage 2 holds the VM paused). One request at a time. */
class PresentPagesServer {
  private child: ChildProcess;
  private buf: Buffer = Buffer.alloc(0);
  private reply?: { resolve: (a: Uint32Array) => void; reject: (e: Error) => void };
  private dead?: Error;

  constructor(file: string) {
    this.child = spawn(presentPagesHelper(), ['--serve', file], { stdio: ['pipe', 'pipe', 'ignore'] });
    this.child.stdout!.on('data', (d: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : Buffer.from(d);
      this.settle();
    });
    this.child.on('exit', () => {
      this.dead = new Error('the SEEK_DATA helper exited');
      this.reply?.reject(this.dead);
      this.reply = undefined;
    });
    this.child.stdin!.on('error', () => {});
  }

  private settle(): void {
    if (!this.reply || this.buf.length < 4) return;
    const count = this.buf.readUInt32LE(0);
    if (this.buf.length < 4 + count * 4) return;
    const out = new Uint32Array(count); // x86: the helper's u32s are already little-endian
    Buffer.from(out.buffer).set(this.buf.subarray(4, 4 + count * 4));
    this.buf = this.buf.subarray(4 + count * 4);
    const r = this.reply;
    this.reply = undefined;
    r.resolve(out);
  }

  harvest(): Promise<Uint32Array> {
    if (this.dead) return Promise.reject(this.dead);
    return new Promise((resolve, reject) => {
      this.reply = { resolve, reject };
      this.child.stdin!.write('\n');
    });
  }

  close(): void {
    this.child.kill('SIGKILL');
  }
}

/**
 * Post-copy destination: candidates are the present pages of the RAM file. Once the migration
 * has completed (every page present) `allPresent()` switches it to a full scan.
 */
export class PresentPagesDirtySource implements DirtySource {
  readonly kind = 'present-pages' as const;
  private full = false;
  private server?: PresentPagesServer;
  constructor(private readonly ramPath: string) {}

  allPresent(): void {
    this.full = true;
    this.server?.close();
    this.server = undefined;
  }

  /**
   * Not even a zero shadow makes it compare holes: a RIC loop reloads its shadow after a
   * failed round (reloadOnFailure) before it takes the next one.
   */
  async harvest(req: HarvestRequest): Promise<Uint32Array> {
    if (this.full) return req.compareAll();
    this.server ??= new PresentPagesServer(this.ramPath);
    return this.server.harvest();
  }

  async close(): Promise<void> {
    this.server?.close();
  }
}
