// The one checkpoint loop (src/checkpoint/checkpointer.ts) over a fake store and QMP: it asks
// the dirty source for candidates (a zero shadow makes a source with a log compare all), arms
// and disarms the dirty-page threshold, releases the gate after a commit, and ends with QEMU.
import t, { type Test } from 'tap';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EventEmitter } from 'node:events';
import { Checkpointer, type CheckpointGate, type CheckpointerOptions } from '../../src/checkpoint/checkpointer.js';
import type { DirtySource, HarvestRequest } from '../../src/qemu/dirty/source.js';
import type { QmpClient } from '../../src/qemu/qmp.js';
import type { CheckpointStore } from '../../src/store/checkpoint-store.js';
import type { VersionMeta } from '../../src/store/version-meta.js';
import { summarizeBatch } from '../../src/kernel/page-delta.js';
import { createLogger } from '../../src/util/logger.js';
import type { WorkProgress } from '../../src/util/progress.js';

const PAGES = 64;

/** Commits every round in memory; `failNext` makes the next commit throw. */
class FakeStore {
  version = 0;
  failNext = false;
  async begin(parent: number) {
    let chunks = 0;
    return {
      version: this.version + 1,
      addChunk: () => void chunks++,
      addPages: async (records: Uint8Array) => {
        chunks++;
        return summarizeBatch(records).records;
      },
      setDeviceState: () => {},
      setDevice: async () => {},
      abort: async () => {},
      commit: async (meta: Omit<VersionMeta, 'version' | 'parent' | 'chunks' | 'bytesStored' | 'deviceStateStored' | 'committedAt'>) => {
        if (this.failNext) {
          this.failNext = false;
          throw new Error('store down');
        }
        return { ...meta, version: ++this.version, parent, chunks, bytesStored: 0, deviceStateStored: 0, committedAt: Date.now() };
      },
    };
  }
  async committed(): Promise<number[]> {
    return [];
  }
}

class FakeQmp {
  status = 'running';
  isClosed = false;
  async execute(cmd: string, args?: Record<string, unknown>): Promise<unknown> {
    if (this.isClosed) throw new Error('QMP closed');
    if (cmd === 'stop') this.status = 'paused';
    if (cmd === 'cont') this.status = 'running';
    if (cmd === 'xen-save-devices-state') writeFileSync(String(args!.filename), 'device');
    return cmd === 'query-status' ? { status: this.status } : {};
  }
}

/** A dirty log: names the pages in `next`, and records every request. */
class LogSource implements DirtySource {
  readonly kind = 'bitmap' as const;
  next: number[] = [];
  requests: boolean[] = [];
  threshold: number[] = [];
  onReach?: () => void;
  allPresentCalls = 0;
  async harvest(req: HarvestRequest): Promise<Uint32Array> {
    this.requests.push(req.shadowZero);
    if (req.shadowZero) return req.compareAll();
    return Uint32Array.from(this.next.splice(0));
  }
  watchThreshold(pages: number, onReach: () => void): void {
    this.threshold.push(pages);
    this.onReach = onReach;
  }
  allPresent(): void {
    this.allPresentCalls++;
  }
  async close(): Promise<void> {}
}

function setup(t: Test, o: Partial<CheckpointerOptions> = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-loop-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const ramPath = join(dir, 'ram');
  writeFileSync(ramPath, Buffer.alloc(PAGES * 4096));
  const poke = (page: number, byte: number) => {
    const fd = openSync(ramPath, 'r+');
    writeSync(fd, Buffer.alloc(4096, byte), 0, 4096, page * 4096);
    closeSync(fd);
  };
  const store = new FakeStore();
  const qmp = new FakeQmp();
  const logs: Record<string, unknown>[] = [];
  const ckpt = new Checkpointer({
    kind: 'fic',
    store: store as unknown as CheckpointStore,
    qmp: qmp as unknown as QmpClient,
    ramPath,
    ramBytes: PAGES * 4096,
    deviceStatePath: join(dir, 'dev'),
    codec: { codec: 'none', level: 0 },
    intervalMs: 20,
    maxPages: 0,
    maxTimeMs: 0,
    log: createLogger({ level: 'debug', destination: { write: (s: string) => void logs.push(JSON.parse(s) as Record<string, unknown>) } }),
    ...o,
  });
  return { ckpt, store, qmp, poke, logs };
}

t.test('the scan source: every round compares all of RAM', async (t) => {
  const { ckpt, poke } = setup(t);
  poke(3, 1);
  poke(9, 2);
  const m1 = await ckpt.roundNow();
  t.equal(m1.pages, 2, 'the first round finds the two written pages');
  t.equal(m1.dirtySource, 'scan', 'recorded as the scan source');
  poke(9, 3);
  const m2 = await ckpt.roundNow();
  t.equal(m2.pages, 1, 'a delta against the shadow');
  t.same(ckpt.rounds.map((r) => r.fullCompare), [true, true]);
});

t.test('a dirty log is asked, and a zero shadow makes it compare all', async (t) => {
  const dirty = new LogSource();
  const { ckpt, store, poke } = setup(t, { dirty });
  poke(1, 1);
  poke(2, 1);
  t.equal((await ckpt.roundNow()).pages, 2, 'first round: zero shadow, full compare');
  poke(5, 1);
  poke(6, 1);
  dirty.next = [5];
  t.equal((await ckpt.roundNow()).pages, 1, 'then only what the log names');
  t.same(ckpt.rounds.map((r) => r.fullCompare), [true, false]);
  store.failNext = true;
  await t.rejects(ckpt.roundNow(), /store down/);
  t.equal(ckpt.head, 0, 'a failed round starts over from a zero image');
  t.equal((await ckpt.roundNow()).pages, 4, 'which the log cannot describe: a full compare');
  t.same(dirty.requests, [true, false, false, false, false, false, true, false], 'shadowZero only in stage 1 on a zero shadow');
});

t.test('keptShadow: the committed image the loop stopped with, none after a failed round', async (t) => {
  const { ckpt, store, poke } = setup(t);
  t.equal(ckpt.keptShadow(), undefined, 'nothing before a round commits (a zero image is nothing to keep)');
  poke(4, 7);
  const m = await ckpt.roundNow();
  await ckpt.stop();
  const kept = ckpt.keptShadow();
  t.equal(kept?.version, m.version, 'the version the shadow equals');
  t.same([kept?.image.length, kept?.image[4 * 4096], kept?.image[4 * 4096 + 4095], kept?.image[3 * 4096]], [PAGES * 4096, 7, 7, 0], 'and its image: guest RAM as that round saw it');
  store.failNext = true;
  await t.rejects(ckpt.roundNow(), /store down/);
  t.equal(ckpt.keptShadow(), undefined, 'a failed round may have left it ahead of the store: not kept');
});

t.test('the final round with the VM stopped: one harvest, in stage 2', async (t) => {
  const dirty = new LogSource();
  const { ckpt, poke } = setup(t, { dirty });
  poke(7, 1);
  t.equal((await ckpt.roundNow('now', { vmStopped: true })).pages, 1, 'a zero shadow compares all in stage 2');
  poke(8, 1);
  dirty.next = [8];
  const m = await ckpt.roundNow('now', { vmStopped: true });
  t.same([m.pages, m.stage1Pages, m.stage2Pages], [1, 0, 1]);
  t.same(dirty.requests, [true, false]);
});

t.test('threshold, gate, becomeFic and the end of the loop', async (t) => {
  const dirty = new LogSource();
  const gateEvents = new EventEmitter();
  const released: number[] = [];
  let seq = 0;
  const gate: CheckpointGate = {
    mark: () => seq,
    release: (mark) => {
      released.push(mark);
      return 0;
    },
    pending: 0,
    on: (ev, l) => gateEvents.on(ev, l),
  };
  const { ckpt, qmp } = setup(t, { kind: 'ric', dirty, gate, intervalMs: 60_000, dirtyPagesThreshold: 100 });
  ckpt.start();
  t.same(dirty.threshold, [100], 'start() arms the dirty-page threshold');
  await new Promise((r) => setTimeout(r, 50));
  seq = 4;
  dirty.onReach!();
  for (let i = 0; i < 100 && ckpt.rounds.length < 2; i++) await new Promise((r) => setTimeout(r, 10));
  t.same(ckpt.rounds.map((r) => r.trigger), ['periodic', 'dirty-pages'], 'the threshold wakes the loop');
  t.same(released, [0, 4], 'each commit releases the frames up to its pause');
  ckpt.becomeFic();
  t.equal(ckpt.kind, 'fic');
  t.equal(dirty.allPresentCalls, 1, 'becomeFic tells the source every page is present');
  t.same(dirty.threshold, [100, 0], 'and turns the threshold off');
  qmp.isClosed = true;
  ckpt.wake('now');
  await ckpt.done;
  t.pass('the loop ends once QEMU is gone');
});

t.test('log lines carry vm and version; a full round reports its progress, and its end', async (t) => {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({ level: 'debug', destination: { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) } });
  const progress: WorkProgress[] = [];
  const { ckpt, store, poke } = setup(t, { log: log.child({ vm: 'c1' }), onProgress: (p) => progress.push(p) });
  poke(4, 1);
  poke(40, 2);
  await ckpt.roundNow();
  t.match(lines.at(-1), { level: 'info', vm: 'c1', version: 1, pages: 2, kind: 'fic', msg: /^FIC version 1: 2 pages/ }, 'the round line');
  t.match(progress[0], { op: 'full-checkpoint', unit: 'pages', version: 1, done: 0, total: 2 }, 'the full compare starts at 0 of 2');
  t.match(progress.at(-1), { op: 'full-checkpoint', version: 1, done: 2, total: 2, finished: true }, 'and says it ended');
  const n = progress.length;
  poke(4, 3);
  await ckpt.roundNow();
  t.equal(progress.length, n, 'a delta round reports nothing (the scan compares all of RAM, but against the shadow)');
  store.failNext = true;
  poke(5, 1);
  await t.rejects(ckpt.roundNow());
  t.match(lines.at(-1), { level: 'error', vm: 'c1', msg: 'FIC round failed: store down' }, 'a failed round is an error line');
});
