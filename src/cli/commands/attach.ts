// `migsafe attach --vm ID --qmp SOCK --ram FILE`: checkpoint a QEMU started by someone else.
import type { CommandModule } from 'yargs';
import { readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { reusableArgv } from '../../qemu/launch.js';
import { QmpClient } from '../../qemu/qmp.js';
import { checkpointLoop } from '../checkpoint-loop.js';
import { runDir } from '../context.js';
import { logger } from '../log.js';
import { withCheckpointing, withStore, type CheckpointArgs } from '../options.js';
import { asWriter } from '../writer.js';

interface AttachArgs extends CheckpointArgs {
  qmp: string;
  ram: string;
  pid?: number;
  ft?: string;
}

export const attachCommand: CommandModule<object, AttachArgs> = {
  command: 'attach',
  describe: 'Checkpoint a running QEMU whose guest RAM is a shared file (memory-backend-file,share=on)',
  builder: (y) =>
    withCheckpointing(withStore(y))
      .option('qmp', { type: 'string', demandOption: true, describe: "path of the QEMU's QMP unix socket" })
      .option('ram', { type: 'string', demandOption: true, describe: 'the guest RAM file (mem-path of the backend)' })
      .option('ft', { type: 'string', describe: "the patched QEMU's migsafe-ft socket: use its dirty bitmap" })
      .option('pid', {
        type: 'number',
        describe: "QEMU's process id: its command line is recorded so that `migsafe recover` can restart it",
      }) as never,
  handler: async (a) => {
    let ramBytes: number;
    try {
      ramBytes = statSync(a.ram).size;
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
      const qmp = await QmpClient.connect(a.qmp, 5_000);
      if (!argv.length) logger.warn({ vm: a.vm }, 'no --pid: the QEMU command line is not recorded, recovery will need it');
      process.exitCode = await checkpointLoop({
        vm: a.vm,
        store: h.store,
        qmp,
        ramPath: a.ram,
        ramBytes,
        deviceStatePath: join(runDir(), `${a.vm}.attach.devstate`),
        quitVmOnStop: false,
        ftSocket: a.ft,
        ...loop,
      });
    });
  },
};
