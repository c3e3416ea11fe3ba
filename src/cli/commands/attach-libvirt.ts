// `migsafe attach --domain NAME`: QMP, guest RAM and the domain XML through libvirt; the XML is
// recorded so that `migsafe recover` re-creates the domain through libvirt (docs/libvirt.md).
import { statSync } from 'node:fs';
import { join } from 'node:path';
import {
  Virsh,
  qmpProblem,
  sharedFileMemoryProblem,
  ftSocketOf,
  qemuCommandline,
  qmpSocketOf,
  sharedRamFile,
  withQemuCommandline,
  withoutIncomingArgs,
} from '../../qemu/libvirt.js';
import { QmpClient } from '../../qemu/qmp.js';
import { checkpointLoop } from '../checkpoint-loop.js';
import { runDir } from '../context.js';
import { logger } from '../log.js';
import { asWriter } from '../writer.js';
import type { AttachArgs } from './attach.js';

export async function attachDomain(a: AttachArgs, name: string): Promise<void> {
  const uri = a['libvirt-uri'];
  const virsh = new Virsh(uri);
  const state = await virsh.existingState(name);
  // What the domain's XML lacks is said first, all of it at once (one `virsh edit`), whatever
  // its state: the fix needs a restart anyway.
  // --migratable: the XML libvirt itself would start a migration's destination from, so the
  // re-created QEMU has the same devices (the device state must fit them); without what a
  // migsafe recovery added to its commandline.
  const migratable = await virsh.dumpXml(name, ['--migratable']);
  const args = withoutIncomingArgs(qemuCommandline(migratable));
  const xml = withQemuCommandline(migratable, args);
  const qmpPath = a.qmp ?? qmpSocketOf(args);
  const missing = [sharedFileMemoryProblem(migratable), qmpPath ? undefined : qmpProblem(name)].filter((m) => m !== undefined);
  if (missing.length) {
    throw new Error(
      `libvirt domain "${name}" cannot be checkpointed: ${missing.join('; ')}. ` +
        `Edit it (virsh -c ${uri} edit ${name}), then restart it (docs/libvirt.md)`,
    );
  }
  if (state !== 'running' && state !== 'paused') {
    throw new Error(`libvirt domain "${name}" is ${state}, not running: start it (virsh -c ${uri} start ${name}), then attach`);
  }
  if (!qmpPath) throw new Error('unreachable: no QMP path');
  if (!qmpSocketOf(args)) {
    logger.warn({ vm: a.vm }, `--qmp ${qmpPath} is not in the domain's <qemu:commandline>: recovery needs it there`);
  }
  const qmp = await QmpClient.connect(qmpPath, 5_000);
  try {
    const ram = a.ram !== undefined ? { path: a.ram, bytes: statSync(a.ram).size } : await sharedRamFile(qmp, `libvirt domain "${name}"`);
    const ft = a.ft ?? (a['dirty-source'] !== 'scan' ? ftSocketOf(args) : undefined);
    logger.info({ vm: a.vm, domain: name, qmp: qmpPath, ram: ram.path }, `libvirt domain ${name}: QMP ${qmpPath}, guest RAM ${ram.path}`);
    await asWriter(a, { retry: true }, async ({ h, loop }) => {
      await h.store.init([], ram.bytes, '/', { uri, domain: name, xml });
      await h.store.cleanupPending();
      process.exitCode = await checkpointLoop({
        vm: a.vm,
        store: h.store,
        qmp,
        ramPath: ram.path,
        ramBytes: ram.bytes,
        deviceStatePath: join(runDir(), `${a.vm}.attach.devstate`),
        quitVmOnStop: false, // libvirt's VM: libvirt stops it
        ftSocket: ft,
        ...loop,
      });
    });
  } finally {
    qmp.close();
  }
}
