// The real test guest boots under stock QEMU (TCG), its workloads make progress and verify
// their memory, the progress record in guest RAM agrees with the console, and the self-check
// does catch a corrupted page.
import t, { type Test } from 'tap';
import { createSocket } from 'node:dgram';
import { closeSync, copyFileSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { QmpClient } from '../../src/qemu/qmp.js';
import { patchedQemu } from '../helpers/patched-qemu.js';
import {
  ensureGuestBuilt,
  findProgressInImage,
  findProgressRecords,
  findRegionPages,
  guestQemuArgs,
  PAGE_SIZE,
  PROGRESS_CHECK_XOR,
  PROGRESS_MAGIC,
  parseConsole,
  startTestGuest,
  waitForConsole,
  type GuestWorkload,
  type TestGuest,
} from '../helpers/guest.js';

const BOOT_TIMEOUT_MS = 60_000;

function consecutive(counters: number[]): boolean {
  return counters.every((c, i) => i === 0 || c === counters[i - 1]! + 1);
}

async function qmpOf(t: Test, g: TestGuest): Promise<QmpClient> {
  const q = await QmpClient.connect(g.qmpPath, 15_000);
  t.teardown(() => q.close());
  return q;
}

/** Pause the VM, read its RAM file, resume: a consistent image. */
async function pausedImage(q: QmpClient, g: TestGuest): Promise<Buffer> {
  await q.execute('stop');
  try {
    return readFileSync(g.ramPath);
  } finally {
    await q.execute('cont');
  }
}

t.test('build is cached and complete', async (t) => {
  const a = ensureGuestBuilt();
  t.match(a.manifest.kernelVersion, /-cloud-amd64$/);
  t.same(
    a.manifest.modules.map((m) => m.replace(/^.*\//, '').replace(/\.ko.*$/, '')).filter((m) =>
      ['virtio', 'virtio_ring', 'virtio_pci', 'failover', 'net_failover', 'virtio_net'].includes(m),
    ).length,
    6,
    'all six virtio-net modules in the initramfs',
  );
  const before = readFileSync(a.initrd);
  const again = ensureGuestBuilt({ recheck: true }); // runs build.sh again: must be a no-op
  t.equal(again.manifest.builtAt, a.manifest.builtAt, 'second build.sh run did not rebuild');
  t.ok(readFileSync(again.initrd).equals(before));
  const argv = guestQemuArgs({ workload: 'wset', serialLog: '/tmp/x.log', workloadMiB: 8 });
  t.notOk(argv.some((x) => x.includes('memory-backend') || x === '-qmp'), 'no RAM backend, no QMP');
  t.match(argv[argv.indexOf('-append') + 1]!, /console=ttyS0 .*migsafe\.workload=wset migsafe\.mib=8/);
});

t.test('console parser', async (t) => {
  const text =
    'junk\r\nMIGSAFE progress workload=wset counter=1 verified=1 errors=0 ops=5 cycles=0 uptime_ms=1000\r\n' +
    '[   1.2] some kernel line\r\n' +
    'MIGSAFE ERROR workload=wset counter=2 kind=checksum page=17 expected=0x1 got=0x2\r\n' +
    'MIGSAFE progress workload=wset counter=2 verified=0 errors=1 ops=9 cycles=0 uptime_ms=2000\r\n' +
    'MIGSAFE progress workload=wset counter=3 verif'; // incomplete last line: ignored
  const c = parseConsole(text);
  t.same(c.counters, [1, 2]);
  t.equal(c.lastCounter, 2);
  t.equal(c.verifiedCount, 1);
  t.equal(c.errors.length, 1);
  t.equal(c.errors[0]!.page, 17);
  t.equal(c.errors[0]!.kind, 'checksum');
});

async function bootAndCheck(t: Test, workload: GuestWorkload, extra: Partial<Parameters<typeof startTestGuest>[0]> = {}) {
  const g = startTestGuest({ workload, t, ...extra });
  const q = await qmpOf(t, g);
  const started = Date.now();
  const c = await waitForConsole(g.serialLog, (c) => c.verifiedCount >= 3 || c.errors.length > 0 || c.died, BOOT_TIMEOUT_MS, {
    child: g.child,
  });
  t.comment(`${workload}: 3 verified progress lines ${((Date.now() - started) / 1000).toFixed(1)} s after start`);
  t.same(c.errors, [], 'no errors');
  t.notOk(c.died, 'guest alive');
  t.ok(c.ready, 'workload reported ready');
  t.ok(c.progress.every((p) => p.workload === workload), 'lines name the workload');
  if (workload !== 'udp') t.ok(consecutive(c.counters), `counter +1 per line: ${c.counters.join(',')}`);
  else t.ok(c.counters.every((x, i) => i === 0 || x > c.counters[i - 1]!), 'udp counter rises');

  // The record in guest RAM, read with the VM paused.
  const image = await pausedImage(q, g);
  const after = parseConsole(readFileSync(g.serialLog, 'latin1'));
  const recs = findProgressRecords(image);
  t.equal(recs.length, 1, 'exactly one progress record in RAM');
  const rec = findProgressInImage(image);
  t.not(rec, null);
  t.equal(recs[0]!.workload, workload);
  const last = BigInt(after.lastCounter ?? -1);
  if (workload === 'udp') {
    t.ok(rec! >= last && rec! <= last + 40n, `record ${rec} within a second of the console's ${last}`);
  } else {
    // The record is stored just before the line is printed.
    t.ok(rec === last || rec === last + 1n, `record ${rec} = console ${last} (or the line about to be printed)`);
  }
  const pages = findRegionPages(image, workload);
  t.equal(BigInt(pages.length), recs[0]!.regionPages, `all ${pages.length} region pages found by their header`);
  t.same(new Set(pages.map((p) => p.index)).size, pages.length, 'page indexes unique');

  // It goes on from there.
  const c2 = await waitForConsole(g.serialLog, (c) => (c.lastCounter ?? 0) >= Number(rec!) + 1, 20_000, { child: g.child });
  t.same(c2.errors, [], 'still no errors after pause/resume');
  return { g, q, c: c2, rec: rec! };
}

/** A TCP port free on 127.0.0.1 right now. */
async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((res) => srv.listen(0, '127.0.0.1', () => res()));
  const port = (srv.address() as AddressInfo).port;
  await new Promise<void>((res) => srv.close(() => res()));
  return port;
}

/** A UDP socket on 127.0.0.1 (slirp's 10.0.2.2) collecting the guest's datagram counters. */
async function udpSink(t: Test, workload: string): Promise<{ port: number; got: number[] }> {
  const sock = createSocket('udp4');
  t.teardown(() => sock.close());
  const got: number[] = [];
  const re = new RegExp(`^MIGSAFE udp workload=${workload} counter=(\\d+)\n$`);
  sock.on('message', (m) => {
    const mm = re.exec(m.toString('latin1'));
    if (mm) got.push(Number(mm[1]));
  });
  await new Promise<void>((res) => sock.bind(0, '127.0.0.1', () => res()));
  return { port: (sock.address() as AddressInfo).port, got };
}

t.test('progress record scanner', async (t) => {
  const img = Buffer.alloc(64 * PAGE_SIZE);
  const put = (page: number, counter: bigint, check = counter ^ PROGRESS_CHECK_XOR) => {
    const off = page * PAGE_SIZE;
    PROGRESS_MAGIC.copy(img, off);
    img.writeBigUInt64LE(counter, off + 16);
    img.writeBigUInt64LE(check, off + 24);
    img.write('wset', off + 32, 'latin1');
  };
  t.equal(findProgressInImage(img), null, 'none in an empty image');
  put(7, 41n, 41n); // torn / wrong check value: not a record
  t.equal(findProgressInImage(img), null, 'a record whose check fails is ignored');
  put(9, 42n);
  t.equal(findProgressInImage(img), 42n);
  t.equal(findProgressRecords(img)[0]!.workload, 'wset');
  // not page-aligned: ignored
  PROGRESS_MAGIC.copy(img, 20 * PAGE_SIZE + 8);
  t.equal(findProgressRecords(img).length, 1);
  put(30, 42n);
  t.equal(findProgressInImage(img), 42n, 'two identical copies agree');
  put(31, 40n);
  t.throws(() => findProgressInImage(img), /disagree/, 'a stale copy is an error');
});

// Two guests at a time: the wall time of this file stays well under 2 minutes on 2 cores.
t.test('workloads boot, progress, verify, record matches console', { jobs: 2 }, async (t) => {
  ensureGuestBuilt();
  t.test('idle, with one datagram a tick to a peer', async (t) => {
    const { port, got } = await udpSink(t, 'idle');
    const { g } = await bootAndCheck(t, 'idle', {
      netdev: { netdev: 'user,id=n0', ip: '10.0.2.15/24', peer: `10.0.2.2:${port}` },
    });
    const c = parseConsole(readFileSync(g.serialLog, 'latin1'));
    t.ok(got.length >= 3, `received ${got.length} datagrams`);
    t.ok(consecutive(got), `datagram counters consecutive: ${got.join(',')}`);
    t.ok(got.every((x) => c.counters.includes(x) || x === c.lastCounter! + 1), 'each datagram carries a tick counter');
  });
  t.test('qsort (2 MiB: sorts complete and are checked)', async (t) => {
    const { g } = await bootAndCheck(t, 'qsort', { workloadMiB: 2 });
    const c = await waitForConsole(g.serialLog, (c) => (c.progress.at(-1)?.cycles ?? 0) >= 1 || c.errors.length > 0, 30_000, {
      child: g.child,
    });
    t.same(c.errors, []);
    t.ok(c.progress.at(-1)!.cycles >= 1, 'at least one sort completed and was found sorted');
  });
  t.test('kv, then restored from a RAM image + device state: continues from the record', async (t) => {
    const { g, q, c } = await bootAndCheck(t, 'kv');
    const p = c.progress;
    const rate = (p.at(-1)!.ops - p[0]!.ops) / ((p.at(-1)!.uptimeMs - p[0]!.uptimeMs) / 1000);
    t.ok(rate > 20_000, `kv updates at ${Math.round(rate)}/s`);

    // A checkpoint the way DESIGN.md's restore works on stock QEMU.
    await waitForConsole(g.serialLog, (c) => (c.lastCounter ?? 0) >= p.at(-1)!.counter + 1, 10_000, { child: g.child });
    await q.execute('stop');
    const devState = `${g.ramPath}.devstate`;
    t.teardown(() => rmSync(devState, { force: true }));
    await q.execute('xen-save-devices-state', { filename: devState, live: false });
    const ramCopy = `${g.ramPath}.restored`;
    t.teardown(() => rmSync(ramCopy, { force: true }));
    copyFileSync(g.ramPath, ramCopy);
    const k = Number(findProgressInImage(readFileSync(ramCopy)));
    const opsAtCheckpoint = parseConsole(readFileSync(g.serialLog, 'latin1')).progress.at(-1)!.ops;
    await g.stop(); // the "failed" host

    const r = startTestGuest({ workload: 'kv', t, ramPath: ramCopy, incoming: true });
    const q2 = await qmpOf(t, r);
    await q2.execute('migrate-incoming', { uri: `exec:cat ${devState}` });
    const rc = await waitForConsole(r.serialLog, (c) => c.progress.length >= 3 || c.errors.length > 0, 30_000, { child: r.child });
    t.same(rc.errors, [], 'restored guest verifies its memory');
    t.ok(rc.counters[0] === k || rc.counters[0] === k + 1, `restored guest goes on from ${k}: ${rc.counters.join(',')}`);
    t.ok(consecutive(rc.counters), 'and keeps counting');
    t.ok(rc.progress[0]!.ops >= opsAtCheckpoint, 'its work continues (ops not reset)');
    t.notOk(/MIGSAFE (boot|ready)/.test(readFileSync(r.serialLog, 'latin1')), 'no reboot, no re-initialisation');
  });
  // On the patched QEMU: stock 7.2 under TCG loses guest writes during a pre-copy that lasts
  // (qemu-patches 0006; a loaded machine makes even this short one last), and the destination
  // guest then dies of corrupted memory.
  t.test('wset (16 MiB) across a live migration (patched QEMU): goes on, memory verified', async (t) => {
    const port = await freePort();
    const qemu = patchedQemu();
    const src = startTestGuest({ workload: 'wset', workloadMiB: 16, t, qemu });
    const dst = startTestGuest({ workload: 'wset', workloadMiB: 16, t, qemu, incoming: `tcp:127.0.0.1:${port}` });
    const q1 = await qmpOf(t, src);
    await waitForConsole(src.serialLog, (c) => c.verifiedCount >= 2 || c.errors.length > 0, BOOT_TIMEOUT_MS, { child: src.child });
    await q1.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
    const deadline = Date.now() + 60_000;
    let status = '';
    while (Date.now() < deadline) {
      status = (await q1.execute<{ status: string }>('query-migrate')).status;
      if (status === 'completed' || status === 'failed') break;
      await new Promise((r) => setTimeout(r, 250));
    }
    t.equal(status, 'completed', 'migration completed');
    const last = parseConsole(readFileSync(src.serialLog, 'latin1')).lastCounter!;
    const c = await waitForConsole(dst.serialLog, (c) => c.progress.length >= 3 || c.errors.length > 0 || c.died, 30_000, {
      child: dst.child,
    });
    t.same(c.errors, [], 'destination verifies its memory');
    t.notOk(c.died, 'destination guest alive');
    t.ok(c.counters[0] === last || c.counters[0] === last + 1, `destination goes on from ${last}: ${c.counters.join(',')}`);
    t.equal(c.verifiedCount, c.progress.length, 'every tick verified');
  });
  t.test('udp over virtio-net (slirp), datagrams carry the counter', async (t) => {
    const { port, got } = await udpSink(t, 'udp');
    const { g } = await bootAndCheck(t, 'udp', {
      netdev: { netdev: 'user,id=n0', ip: '10.0.2.15/24', peer: `10.0.2.2:${port}` },
    });
    const text = readFileSync(g.serialLog, 'latin1');
    t.match(text, /MIGSAFE net iface=eth0 ip=10\.0\.2\.15\/24/, 'eth0 configured (virtio-net modules loaded)');
    t.ok(got.length >= 20, `received ${got.length} datagrams`);
    t.ok(
      got.every((x, i) => i === 0 || x === got[i - 1]! + 1),
      'datagram counters consecutive',
    );
  });
});

t.test('wset: the self-check catches a page corrupted through the shared RAM file', async (t) => {
  ensureGuestBuilt();
  const { g, q } = await bootAndCheck(t, 'wset', { workloadMiB: 16 });
  const c0 = parseConsole(readFileSync(g.serialLog, 'latin1'));
  const rate = (c0.progress.at(-1)!.ops - c0.progress[0]!.ops) / ((c0.progress.at(-1)!.uptimeMs - c0.progress[0]!.uptimeMs) / 1000);
  t.ok(rate > 100_000 && rate < 300_000, `wset writes at ${Math.round(rate)}/s (target 200k)`);

  await q.execute('stop');
  const image = readFileSync(g.ramPath);
  const pages = findRegionPages(image, 'wset');
  t.equal(pages.length, 16 * 256, 'all wset pages found');
  const victim = pages.find((p) => p.index === 1234)!;
  t.ok(victim, 'page 1234 found');
  const counterAtCorruption = findProgressInImage(image)!;
  // Flip 8 bytes in the middle of its data area.
  const at = victim.offset + 2048;
  const bytes = Buffer.from(image.subarray(at, at + 8)).map((b) => b ^ 0xa5);
  const fd = openSync(g.ramPath, 'r+');
  try {
    writeSync(fd, bytes, 0, 8, at);
  } finally {
    closeSync(fd);
  }
  await q.execute('cont');

  const c = await waitForConsole(
    g.serialLog,
    (c) => c.errors.length > 0 && (c.lastCounter ?? 0) >= Number(counterAtCorruption) + 2,
    20_000,
    { child: g.child },
  );
  const errs = c.errors.filter((e) => e.kind === 'checksum');
  t.equal(errs.length, 1, 'exactly one checksum error');
  t.equal(errs[0]?.page, 1234, 'on the corrupted page');
  t.equal(errs[0]?.workload, 'wset');
  const bad = c.progress.find((p) => !p.verified);
  t.ok(bad, 'a progress line says verified=0');
  t.ok(bad!.counter > Number(counterAtCorruption), 'after the corruption');
  t.ok(c.progress.at(-1)!.verified, 'later ticks verify again (reported once)');
  t.equal(c.progress.at(-1)!.errors, 1, 'cumulative errors = 1');
});
