// Client of the patched QEMU's migsafe-ft socket (qemu-patches/PROTOCOL.md): RAM layout,
// the shared dirty bitmap and the eventfds arrive with SCM_RIGHTS through the addon.
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import * as ft from '../kernel/ft-socket.js';
import { mapFd } from '../kernel/map-file.js';

export interface FtBlock {
  name: string;
  'ram-addr': number;
  length: number;
  'bitmap-base': number;
  shared: boolean;
}

interface HelloReply {
  reply: 'hello';
  version: number;
  'page-size': number;
  'total-pages': number;
  tracking: boolean;
  'bitmap-fd': number;
  'bitmap-size': number;
  'bitmap-header': number;
  'harvest-fd': number;
  'done-fd': number;
  'threshold-fd': number;
  'net-tx-fd'?: number;
  blocks: (FtBlock & { fd?: number })[];
  error?: string;
}

const MAGIC = 0x31504d4254464d53n; // "MSFTBMP1"
const REPLY_TIMEOUT_MS = 10_000;

export class FtClient {
  private constructor(
    private readonly sock: number,
    readonly blocks: FtBlock[],
    private readonly bitmap: Buffer,
    private readonly headerBytes: number,
    private readonly harvestFd: number,
    private readonly doneFd: number,
    /** QEMU writes it once the dirty count since the last harvest reaches the threshold. */
    readonly thresholdFd: number,
    private readonly ownedFds: number[],
  ) {}

  /** Connects (waiting for QEMU to create the socket) and says hello. */
  static async connect(path: string, timeoutMs = 30_000): Promise<FtClient> {
    const deadline = Date.now() + timeoutMs;
    let sock = -1;
    for (;;) {
      try {
        if (existsSync(path)) {
          sock = ft.ftConnect(path);
          break;
        }
      } catch {
        /* QEMU not listening yet */
      }
      if (Date.now() > deadline) throw new Error(`cannot connect to QEMU's migsafe-ft socket ${path}`);
      await sleep(50);
    }
    ft.ftSend(sock, JSON.stringify({ cmd: 'hello' }));
    const { message, fds } = ft.ftRecv(sock, REPLY_TIMEOUT_MS);
    const h = JSON.parse(message) as HelloReply;
    if (h.error || h.reply !== 'hello') {
      fds.forEach((f) => ft.closeFd(f));
      ft.closeFd(sock);
      throw new Error(`migsafe-ft hello refused: ${h.error ?? message}`);
    }
    if (h.version !== 1 || h['page-size'] !== 4096) {
      fds.forEach((f) => ft.closeFd(f));
      ft.closeFd(sock);
      throw new Error(`migsafe-ft protocol version ${h.version} / page size ${h['page-size']} is not supported`);
    }
    const bitmap = mapFd(fds[h['bitmap-fd']]!, h['bitmap-size']);
    if (bitmap.readBigUInt64LE(0) !== MAGIC) throw new Error('migsafe-ft bitmap has a wrong magic number');
    return new FtClient(sock, h.blocks, bitmap, h['bitmap-header'], fds[h['harvest-fd']]!, fds[h['done-fd']]!, fds[h['threshold-fd']]!, fds);
  }

  request<T = Record<string, unknown>>(cmd: string, args: Record<string, unknown> = {}, sendFd?: number): T {
    ft.ftSend(this.sock, JSON.stringify({ cmd, ...args }), sendFd);
    const { message, fds } = ft.ftRecv(this.sock, REPLY_TIMEOUT_MS);
    fds.forEach((f) => ft.closeFd(f));
    const r = JSON.parse(message) as T & { reply: string; error?: string };
    if (r.error) throw new Error(`migsafe-ft ${cmd}: ${r.error}`);
    return r;
  }

  /** Turns dirty tracking on and clears it. */
  start(): void {
    this.request('start');
  }

  /**
   * Dirty-count threshold (0: off): every `pollMs` QEMU counts the pages dirty since the last
   * harvest and writes the threshold eventfd once the count reaches `pages` (re-armed by a harvest).
   */
  setThreshold(pages: number, pollMs?: number): void {
    this.request('threshold', pollMs === undefined ? { pages } : { pages, 'poll-ms': pollMs });
  }

  /** Asks QEMU to fill the bitmap and waits for it; returns how many pages it holds. */
  async harvest(timeoutMs = 10_000): Promise<number> {
    const seq = this.bitmap.readBigUInt64LE(16);
    ft.eventfdSignal(this.harvestFd);
    const v = await ft.eventfdWaitAsync(this.doneFd, timeoutMs);
    if (v === 0) throw new Error(`QEMU did not finish a dirty-bitmap harvest within ${timeoutMs} ms`);
    if (this.bitmap.readBigUInt64LE(16) === seq) throw new Error('migsafe-ft harvest-done without a new bitmap');
    return Number(this.bitmap.readBigUInt64LE(24));
  }

  /** Pages of `block` set in the bitmap of the last harvest, as block-relative page indexes. */
  dirtyPages(block: FtBlock): Uint32Array {
    const pages = block.length / 4096;
    const base = block['bitmap-base'];
    const out: number[] = [];
    const words = new Uint32Array(this.bitmap.buffer, this.bitmap.byteOffset + this.headerBytes, (this.bitmap.length - this.headerBytes) >> 2);
    for (let p = 0; p < pages; p += 32) {
      let w = words[(base + p) >> 5]!;
      while (w) {
        const bit = 31 - Math.clz32(w & -w);
        if (p + bit < pages) out.push(p + bit);
        w &= w - 1;
      }
    }
    return Uint32Array.from(out);
  }

  close(): void {
    for (const f of this.ownedFds) ft.closeFd(f);
    ft.closeFd(this.sock);
  }
}
