// migsafe as the post-copy source of a recovering QEMU: the stream's prologue (header, return
// path, advise, RAM setup, the device state packaged with LISTEN and RUN), then pages — the ones
// the guest faults on (the return path's requests) before the rest — each sent once and only
// once it is final and verified, then the end of the migration.
import type { Socket } from 'node:net';
import { setImmediate as turn } from 'node:timers/promises';
import { PAGE_SIZE, ReturnPathParser, ramPagesSection, streamEpilogue, streamPrologue, type PageOut, type RamBlockInfo } from './postcopy-stream.js';

/** Pages per section: small, so that a requested page is never stuck behind many others. */
const SECTION_PAGES = 32;
const ZERO = Buffer.alloc(PAGE_SIZE);

export interface PostcopySourceOptions {
  /** The guest RAM block (migsafe's memory backend) and its image, filled as pages become ready. */
  block: string;
  image: Buffer;
  /** QEMU's other RAM blocks (firmware, option ROMs, ACPI blobs): sent as zero pages, as eager recovery leaves them. */
  others: readonly RamBlockInfo[];
  deviceState: Buffer;
  /** The guest asks for a guest page that is not ready: the fault path may fetch it out of turn. */
  onMiss?: (page: number) => void;
}

export interface PostcopyStats {
  /** Page requests from the return path, and those that had to wait for the page to be read. */
  requests: number;
  waited: number;
  pagesSent: number;
  zeroPages: number;
  bytesSent: number;
}

export class PostcopySource {
  readonly stats: PostcopyStats = { requests: 0, waited: 0, pagesSent: 0, zeroPages: 0, bytesSent: 0 };
  private readonly pages: number;
  private readonly ready: Uint8Array;
  private readonly sent: Uint8Array;
  private readonly waiting = new Set<number>();
  private urgent: number[] = [];
  private urgentOther: PageOut[] = [];
  private background: number[][] = [];
  private bgAt = 0;
  private readonly otherSent = new Map<string, Set<number>>();
  private othersQueued = false;
  private allReady = false;
  private sock?: Socket;
  private pumping = false;
  private again = false;
  private failure?: Error;
  private readonly parser = new ReturnPathParser();
  private finishedResolve!: () => void;
  private finishedReject!: (e: Error) => void;
  /** The end of the migration is written: every page sent. */
  readonly finished: Promise<void>;

  constructor(private readonly o: PostcopySourceOptions) {
    this.pages = o.image.length / PAGE_SIZE;
    this.ready = new Uint8Array(this.pages);
    this.sent = new Uint8Array(this.pages);
    for (const b of o.others) this.otherSent.set(b.name, new Set());
    this.finished = new Promise((res, rej) => {
      this.finishedResolve = res;
      this.finishedReject = rej;
    });
    this.finished.catch(() => {});
  }

  /** Pages now final in the image (the loader's onReady). */
  markReady(pages: number[]): void {
    for (const p of pages) {
      this.ready[p] = 1;
      if (this.waiting.delete(p)) this.urgent.push(p);
    }
    this.background.push(pages);
    this.kick();
  }

  /** The loader is done: every page has been marked ready. */
  markAllReady(): void {
    this.allReady = true;
    this.kick();
  }

  /** Stops sending: nothing more reaches QEMU. */
  fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    this.sock?.destroy();
    this.finishedReject(e);
  }

  /** Starts the migration on a connection to QEMU's incoming socket. */
  attach(sock: Socket): void {
    this.sock = sock;
    sock.on('data', (d: Buffer) => {
      try {
        for (const m of this.parser.push(d)) if (m.type === 'req-pages') this.request(m.block, m.offset, m.length);
      } catch (e) {
        this.fail(e as Error);
      }
      this.kick();
    });
    sock.on('error', (e) => this.fail(new Error(`migration stream to QEMU: ${e.message}`)));
    sock.on('close', () => {
      if (!this.done) this.fail(new Error('QEMU closed the migration stream before it had every page'));
    });
    this.write(streamPrologue([{ name: this.o.block, bytes: this.o.image.length }], this.o.deviceState));
    this.kick();
  }

  private done = false;

  private request(block: string, offset: number, length: number): void {
    this.stats.requests++;
    for (let off = offset; off < offset + Math.max(length, PAGE_SIZE); off += PAGE_SIZE) {
      if (block === this.o.block) {
        const p = off / PAGE_SIZE;
        if (!Number.isInteger(p) || p >= this.pages) throw new Error(`QEMU asked for ${block} +0x${off.toString(16)}, beyond its ${this.pages} pages`);
        if (this.sent[p]) continue;
        if (this.ready[p]) this.urgent.push(p);
        else if (!this.waiting.has(p)) {
          this.waiting.add(p);
          this.stats.waited++;
          this.o.onMiss?.(p);
        }
        continue;
      }
      const sent = this.otherSent.get(block);
      const info = this.o.others.find((b) => b.name === block);
      if (!sent || !info || off >= info.bytes) throw new Error(`QEMU asked for a page of unknown RAM block "${block}" (+0x${off.toString(16)})`);
      if (!sent.has(off)) this.urgentOther.push({ block, offset: off });
    }
  }

  private write(b: Buffer): boolean {
    this.stats.bytesSent += b.length;
    return this.sock!.write(b);
  }

  private kick(): void {
    if (!this.sock || this.failure || this.done) return;
    if (this.pumping) {
      this.again = true; // the pump may be past its last look at the queues
      return;
    }
    this.pumping = true;
    this.again = false;
    void this.pump().finally(() => {
      this.pumping = false;
      if (this.again) this.kick();
    });
  }

  /** The next page to send: requested ones first, then ready ones in the order they became ready. */
  private nextGuestPage(): number | undefined {
    while (this.urgent.length) {
      const p = this.urgent.shift()!;
      if (!this.sent[p]) return p;
    }
    while (this.background.length) {
      const a = this.background[0]!;
      while (this.bgAt < a.length) {
        const p = a[this.bgAt++]!;
        if (!this.sent[p]) return p;
      }
      this.background.shift();
      this.bgAt = 0;
    }
    return undefined;
  }

  private nextOther(urgentOnly: boolean): PageOut | undefined {
    for (;;) {
      const o = this.urgentOther.shift();
      if (!o) break;
      const s = this.otherSent.get(o.block)!;
      if (!s.has(o.offset)) return (s.add(o.offset), o);
    }
    if (urgentOnly) return undefined;
    if (!this.othersQueued) {
      this.othersQueued = true;
      for (const b of this.o.others) for (let off = 0; off < b.bytes; off += PAGE_SIZE) this.urgentOther.push({ block: b.name, offset: off });
      return this.nextOther(false);
    }
    return undefined;
  }

  private async pump(): Promise<void> {
    while (!this.failure && !this.done) {
      const batch: PageOut[] = [];
      while (batch.length < SECTION_PAGES) {
        const o = this.nextOther(true);
        if (o) {
          batch.push(o);
          this.stats.zeroPages++;
          continue;
        }
        const p = this.nextGuestPage();
        if (p === undefined) break;
        this.sent[p] = 1;
        this.stats.pagesSent++;
        const data = this.o.image.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE);
        if (data.equals(ZERO)) {
          this.stats.zeroPages++;
          batch.push({ block: this.o.block, offset: p * PAGE_SIZE });
        } else batch.push({ block: this.o.block, offset: p * PAGE_SIZE, data });
      }
      if (batch.length === 0 && this.allReady && this.stats.pagesSent === this.pages) {
        const o = this.nextOther(false);
        if (o) {
          batch.push(o);
          this.stats.zeroPages++;
        } else {
          this.done = true;
          const flushed = this.write(streamEpilogue());
          if (!flushed) await new Promise((r) => this.sock!.once('drain', r));
          this.finishedResolve();
          return;
        }
      }
      if (batch.length === 0) return; // nothing ready yet: markReady or a request kicks again
      if (!this.write(ramPagesSection(batch))) await new Promise((r) => this.sock!.once('drain', r));
      else await turn(); // let the return path's requests in between sections
    }
  }
}
