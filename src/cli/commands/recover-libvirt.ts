// `migsafe recover` of a VM recorded by `attach --domain`: libvirt re-creates and resumes the
// domain (src/recovery/recover-libvirt.ts); then, as for any recovery, checkpointing goes on.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ftSocketOf, qemuCommandline } from '../../qemu/libvirt.js';
import { recoverLibvirtVm } from '../../recovery/recover-libvirt.js';
import { checkpointLoop } from '../checkpoint-loop.js';
import { fmtBytes, runDir, type StoreHandle } from '../context.js';
import { logger } from '../log.js';
import { Progress } from '../progress.js';
import type { Writer } from '../writer.js';
import type { RecoverArgs } from './recover.js';

export async function recoverDomain(a: RecoverArgs, h: StoreHandle, loop: Writer['loop']): Promise<number> {
  const log = logger.child({ vm: a.vm });
  const progress = new Progress(log);
  let version: number | undefined;
  const deviceStatePath = join(runDir(), `${a.vm}.r${Date.now()}.devstate`);
  const r = await recoverLibvirtVm({
    store: h.store,
    version: a.version,
    deviceStatePath,
    qemuBinary: a['qemu-binary'],
    onPlan: (p) => {
      version = p.target.version;
      log.info(
        { version, base: p.base || undefined, chain: p.chain.length, domain: p.vm.libvirt?.domain },
        `restoring version ${version} into libvirt domain ${p.vm.libvirt?.domain} (${p.chain.length} version(s)), RAM ${p.vm.ramBytes >> 20} MiB`,
      );
    },
    onProgress: (p) => progress.report({ op: 'read-checkpoint', unit: 'frames', version, ...p }),
  }).finally(() => progress.close());
  if (a.pidfile && r.pid) writeFileSync(a.pidfile, `${r.pid}\n`);
  loop.metrics?.recovered(a.vm, r.timings);
  log.info(
    { version: r.plan.target.version, domain: r.domain, pid: r.pid, loadMs: Math.round(r.timings.loadMs), startMs: Math.round(r.timings.startMs) },
    `recovered version ${r.plan.target.version} into libvirt domain ${r.domain}: ${r.pagesApplied} page records, ` +
      `device state ${fmtBytes(r.plan.target.deviceStateBytes)}; read+verify ${r.timings.loadMs.toFixed(0)} ms, ` +
      `libvirt start+load ${r.timings.startMs.toFixed(0)} ms; resumed through libvirt`,
  );
  process.stdout.write(
    JSON.stringify({
      vm: a.vm,
      domain: r.domain,
      libvirtUri: r.uri,
      version: r.plan.target.version,
      base: r.plan.base,
      versionsApplied: r.plan.chain.map((m) => m.version),
      pagesApplied: r.pagesApplied,
      pid: r.pid,
      ram: r.ramPath,
      qmp: r.qmpPath,
      recoveryMs: Math.round(r.timings.totalMs),
    }) + '\n',
  );
  if (a.detach) {
    r.qmp.close();
    return 0;
  }
  await h.store.cleanupPending();
  const ft = a['dirty-source'] !== 'scan' ? ftSocketOf(qemuCommandline(r.plan.vm.libvirt!.xml)) : undefined;
  return checkpointLoop({
    vm: a.vm,
    store: h.store,
    qmp: r.qmp,
    ramPath: r.ramPath,
    ramBytes: r.plan.vm.ramBytes,
    deviceStatePath,
    quitVmOnStop: false, // libvirt's domain: libvirt stops it
    ftSocket: ft,
    resumeFrom: { image: r.image, version: r.plan.target.version },
    ...loop,
  });
}
