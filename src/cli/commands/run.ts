// `migsafe run --vm ID -- <qemu argv>`: launch QEMU with RAM in shared memory and checkpoint it.
import type { CommandModule } from 'yargs';
import { openSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkUserArgv, launchQemu, ramBytesFromArgv, vmPaths, createRamFile } from '../../qemu/launch.js';
import { QmpClient } from '../../qemu/qmp.js';
import { useFt } from '../../qemu/dirty/open.js';
import { checkpointLoop } from '../checkpoint-loop.js';
import { runDir } from '../context.js';
import { logger } from '../log.js';
import { checkQemuArgv, withCheckpointing, withStore, type CheckpointArgs } from '../options.js';
import { asWriter } from '../writer.js';

export interface RunArgs extends CheckpointArgs {
  pidfile?: string;
  '--'?: (string | number)[];
  _: (string | number)[];
}

export async function runHandler(a: RunArgs): Promise<number> {
  const argv = [...(a['--'] ?? [])].map(String);
  checkUserArgv(argv);
  const ramBytes = ramBytesFromArgv(argv);
  const log = logger.child({ vm: a.vm });
  return asWriter(a, { retry: true }, async ({ h, loop }) => {
    await h.store.init(argv, ramBytes);
    const stale = await h.store.cleanupPending();
    if (stale.length) log.info({ stale }, `removed ${stale.length} uncommitted version(s) left by an earlier run`);
    const paths = vmPaths(runDir(), a.vm);
    createRamFile(paths.ram, ramBytes);
    const logFile = join(runDir(), `${a.vm}.qemu.log`);
    const ft = useFt(a['dirty-source'], argv[0]!);
    const qemu = launchQemu({ argv, ramBytes, paths, logFd: openSync(logFile, 'a'), ft });
    if (a.pidfile) writeFileSync(a.pidfile, `${qemu.pid}\n`);
    log.info(
      { pid: qemu.pid, ramBytes, ram: paths.ram, store: h.where, qemuLog: logFile },
      `QEMU started (pid ${qemu.pid}), RAM ${ramBytes >> 20} MiB in ${paths.ram}, store ${h.where}, QEMU log ${logFile}`,
    );
    const qmp = await Promise.race([
      QmpClient.connect(paths.qmp, 30_000),
      qemu.exited.then((c) => {
        throw new Error(`QEMU exited (${c}) at start: see ${logFile}`);
      }),
    ]);
    return await checkpointLoop({
      vm: a.vm,
      store: h.store,
      qmp,
      ramPath: paths.ram,
      ramBytes,
      deviceStatePath: paths.deviceState,
      qemuExited: qemu.exited,
      qemuLog: logFile,
      quitVmOnStop: true,
      ftSocket: ft ? paths.ft : undefined,
      ...loop,
    });
  });
}

export const runCommand: CommandModule<object, RunArgs> = {
  command: 'run',
  describe: 'Start QEMU with guest RAM in shared memory and checkpoint it until stopped',
  builder: (y) =>
    withCheckpointing(withStore(y))
      .option('pidfile', { type: 'string', describe: 'write the QEMU process id to this file' })
      .check((a) => checkQemuArgv(a, true, 'run'))
      .usage('$0 run --vm ID [options] -- <qemu-system-x86_64 argv...>')
      .example('$0 run --vm web1 -- qemu-system-x86_64 -accel kvm -m 1G -drive file=disk.img', '') as never,
  handler: async (a) => {
    process.exitCode = await runHandler(a);
  },
};
