// `migsafe attach --vm ID --qmp SOCK --ram FILE`: checkpoint a QEMU started by someone else;
// `migsafe attach --domain NAME`: one started by libvirt (docs/libvirt.md).
import type { CommandModule } from 'yargs';
import { attachDomain } from './attach-libvirt.js';
import { readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { reusableArgv } from '../../qemu/launch.js';
import { QmpClient } from '../../qemu/qmp.js';
import { checkpointLoop } from '../checkpoint-loop.js';
import { runDir } from '../context.js';
import { logger } from '../log.js';
import { withCheckpointing, withStore, type CheckpointArgs } from '../options.js';
import { asWriter } from '../writer.js';

export interface AttachArgs extends CheckpointArgs {
  qmp?: string;
  ram?: string;
  domain?: string;
  'libvirt-uri': string;
  pid?: number;
  ft?: string;
}

export const attachCommand: CommandModule<object, AttachArgs> = {
  command: 'attach',
  describe: 'Checkpoint a running QEMU whose guest RAM is a shared file (memory-backend-file,share=on), or a libvirt domain (--domain)',
  builder: (y) =>
    withCheckpointing(withStore(y))
      // --vm defaults to the domain's name: set before yargs checks that --vm was given.
      .middleware((a) => {
        if (a.vm === undefined && typeof a.domain === 'string') a.vm = a.domain;
      }, true)
      .option('domain', {
        type: 'string',
        describe:
          "a running libvirt domain: QMP, RAM file and XML are found through libvirt (its XML needs <memoryBacking> with a shared file and -qmp in <qemu:commandline>: docs/libvirt.md); --vm defaults to its name",
      })
      .option('libvirt-uri', { type: 'string', default: 'qemu:///system', describe: 'libvirt connection of --domain' })
      .option('qmp', { type: 'string', describe: "path of the QEMU's QMP unix socket (with --domain: default, the -qmp of its <qemu:commandline>)" })
      .option('ram', { type: 'string', describe: 'the guest RAM file (mem-path of the backend; with --domain: found through QMP)' })
      .check((a) => {
        if (a.domain === undefined && (a.qmp === undefined || a.ram === undefined)) {
          throw new Error('give --qmp SOCK and --ram FILE of the QEMU to attach to, or --domain NAME for a libvirt domain');
        }
        return true;
      })
      .option('ft', { type: 'string', describe: "the patched QEMU's migsafe-ft socket: use its dirty bitmap" })
      .option('pid', {
        type: 'number',
        describe: "QEMU's process id: its command line is recorded so that `migsafe recover` can restart it",
      }) as never,
  handler: async (a) => {
    if (a.domain !== undefined) return attachDomain(a, a.domain);
    if (a.qmp === undefined || a.ram === undefined) throw new Error('give --qmp and --ram, or --domain');
    const { qmp: qmpPath, ram } = a;
    let ramBytes: number;
    try {
      ramBytes = statSync(ram).size;
    } catch {
      throw new Error(`--ram ${a.ram}: no such file (give the mem-path of QEMU's memory-backend-file)`);
    }
    if (ramBytes === 0 || ramBytes % 4096) throw new Error(`--ram ${a.ram}: ${ramBytes} bytes is not a RAM image`);
    let argv: string[] = [];
    let cwd = process.cwd();
    if (a.pid !== undefined) {
      try {
        argv = reusableArgv(readFileSync(`/proc/${a.pid}/cmdline`, 'utf8').split('\0').filter(Boolean));
        cwd = readlinkSync(`/proc/${a.pid}/cwd`);
      } catch {
        throw new Error(`--pid ${a.pid}: no such process`);
      }
    }
    await asWriter(a, { retry: true }, async ({ h, loop }) => {
      await h.store.init(argv, ramBytes, cwd);
      await h.store.cleanupPending();
      const qmp = await QmpClient.connect(qmpPath, 5_000);
      if (!argv.length) logger.warn({ vm: a.vm }, 'no --pid: the QEMU command line is not recorded, recovery will need it');
      process.exitCode = await checkpointLoop({
        vm: a.vm,
        store: h.store,
        qmp,
        ramPath: ram,
        ramBytes,
        deviceStatePath: join(runDir(), `${a.vm}.attach.devstate`),
        quitVmOnStop: false,
        ftSocket: a.ft,
        ...loop,
      });
    });
  },
};
