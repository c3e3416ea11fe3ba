// Recovery of a libvirt domain (recorded by `attach --domain`): everything is read and verified
// first, then libvirt starts the domain paused from its recorded XML plus `-incoming defer`, the
// image goes into the RAM file that QEMU mapped, the device state is loaded, and libvirt resumes
// it — so libvirt owns the new QEMU and knows its state (docs/libvirt.md).
import { connect } from 'node:net';
import { closeSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import {
  INCOMING_ARGS,
  Virsh,
  qemuCommandline,
  qmpSocketOf,
  sharedRamFile,
  withEmulator,
  withQemuCommandline,
  withoutIncomingArgs,
} from '../qemu/libvirt.js';
import { QmpClient } from '../qemu/qmp.js';
import type { CheckpointStore } from '../store/checkpoint-store.js';
import { loadVersion, type LoadProgress, type RestorePlan } from '../store/reader.js';

export interface LibvirtRecoverOptions {
  store: CheckpointStore;
  version?: number;
  /** Scratch path: the device state goes to QEMU through the unix socket PATH.sock. */
  deviceStatePath: string;
  /** Replace the recorded <emulator> (e.g. the patched build). */
  qemuBinary?: string;
  onPlan?: (plan: RestorePlan) => void;
  onProgress?: (p: LoadProgress) => void;
}

export interface LibvirtRecovered {
  plan: RestorePlan;
  domain: string;
  uri: string;
  qmp: QmpClient;
  qmpPath: string;
  ramPath: string;
  pid?: number;
  image: Buffer;
  pagesApplied: number;
  timings: { loadMs: number; startMs: number; totalMs: number };
}

export async function recoverLibvirtVm(o: LibvirtRecoverOptions): Promise<LibvirtRecovered> {
  const t0 = performance.now();
  const loaded = await loadVersion(o.store, o.version, { onPlan: o.onPlan, onProgress: o.onProgress });
  const plan = loaded.plan;
  const lv = plan.vm.libvirt;
  if (!lv) throw new Error(`VM "${o.store.vmId}" was not recorded from a libvirt domain (attach --domain)`);
  const t1 = performance.now();
  const virsh = new Virsh(lv.uri);
  const state = await virsh.state(lv.domain);
  // One copy of the VM: the old QEMU must be gone (libvirt says "shut off" once it died).
  if (state !== null && state !== 'shut off' && state !== 'crashed') {
    throw new Error(
      `libvirt domain "${lv.domain}" is ${state}: its QEMU still runs, and two copies of one VM must never run; ` +
        `stop it first (virsh -c ${lv.uri} destroy ${lv.domain}) if it is the one to replace`,
    );
  }
  const args = withoutIncomingArgs(qemuCommandline(lv.xml));
  const qmpPath = qmpSocketOf(args);
  if (!qmpPath) throw new Error(`the recorded XML of domain "${lv.domain}" has no -qmp unix:PATH in <qemu:commandline>`);
  let xml = withQemuCommandline(lv.xml, [...args, ...INCOMING_ARGS]);
  if (o.qemuBinary) xml = withEmulator(xml, o.qemuBinary);
  rmSync(qmpPath, { force: true }); // the dead QEMU's: connecting to it would only be refused

  await virsh.create(xml, true);
  let qmp: QmpClient | undefined;
  try {
    qmp = await QmpClient.connect(qmpPath, 30_000);
    const ram = await sharedRamFile(qmp, `libvirt domain "${lv.domain}"`);
    if (ram.bytes !== plan.vm.ramBytes) {
      throw new Error(`the re-created domain has ${ram.bytes} bytes of RAM, the checkpoint ${plan.vm.ramBytes}`);
    }
    // The guest has not run: QEMU may only have written its start-up (ROM) bytes, which the image replaces.
    syncRam(ram.path, loaded.image);
    // Over a unix socket, not `exec:cat FILE`: libvirt starts QEMU with `-sandbox spawn=deny`,
    // so QEMU may not run a command.
    const sock = `${o.deviceStatePath}.sock`;
    rmSync(sock, { force: true });
    await qmp.execute('migrate-incoming', { uri: `unix:${sock}` });
    await sendAll(sock, loaded.deviceState).finally(() => rmSync(sock, { force: true }));
    await waitLoaded(qmp, 60_000);
    await virsh.resume(lv.domain); // through libvirt, so that it knows the domain runs
    const st = await qmp.execute<{ status: string }>('query-status');
    if (st.status !== 'running') throw new Error(`after virsh resume QEMU is ${st.status}`);
    const t2 = performance.now();
    return {
      plan,
      domain: lv.domain,
      uri: lv.uri,
      qmp,
      qmpPath,
      ramPath: ram.path,
      pid: virsh.pid(lv.domain),
      image: loaded.image,
      pagesApplied: loaded.pagesApplied,
      timings: { loadMs: t1 - t0, startMs: t2 - t1, totalMs: t2 - t0 },
    };
  } catch (e) {
    qmp?.close();
    await virsh.destroy(lv.domain).catch(() => {});
    throw new Error(`libvirt domain "${lv.domain}" could not take version ${plan.target.version} (destroyed again): ${(e as Error).message}`);
  }
}

/** Makes the file hold `image`, writing only the MiB that differ (most of a fresh file is a hole). */
function syncRam(path: string, image: Buffer): void {
  const fd = openSync(path, 'r+');
  try {
    const STEP = 1 << 20;
    const cur = Buffer.alloc(STEP);
    for (let off = 0; off < image.length; off += STEP) {
      const want = image.subarray(off, Math.min(off + STEP, image.length));
      const n = readSync(fd, cur, 0, want.length, off);
      if (n !== want.length || !cur.subarray(0, n).equals(want)) writeSync(fd, want, 0, want.length, off);
    }
  } finally {
    closeSync(fd);
  }
}

/** Connects to the unix socket QEMU listens on and writes `data`, then closes. */
function sendAll(path: string, data: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const c = connect(path);
    c.once('error', (e) => reject(new Error(`sending the device state to ${path}: ${e.message}`)));
    c.once('connect', () => c.end(data));
    c.once('close', (hadError) => {
      if (!hadError) resolve();
    });
  });
}

/** Started with -S (libvirt), QEMU is `paused` once the device state is in, `inmigrate` before. */
async function waitLoaded(qmp: QmpClient, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
    if (m.status === 'failed' || m.status === 'cancelled') {
      throw new Error(`incoming migration ${m.status}${m['error-desc'] ? `: ${m['error-desc']}` : ''}`);
    }
    const st = await qmp.execute<{ status: string }>('query-status');
    if (st.status === 'paused' || st.status === 'running') return;
    if (st.status !== 'inmigrate') throw new Error(`QEMU is ${st.status} while loading the device state`);
    if (Date.now() > deadline) throw new Error(`device state not loaded after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
