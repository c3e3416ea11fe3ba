// `migsafe recover --vm ID`: rebuild the VM from its last (or a given) committed checkpoint.
import type { CommandModule } from 'yargs';
import { openSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { vmPaths } from '../../qemu/launch.js';
import { recoverVm } from '../../recovery/recover.js';
import { recoverVmLazy, type RecoveredLazy } from '../../recovery/recover-lazy.js';
import { useFt } from '../../qemu/dirty/open.js';
import { checkpointLoop } from '../checkpoint-loop.js';
import { fmtBytes, runDir, type StoreHandle } from '../context.js';
import { planRestore } from '../../store/reader.js';
import { logger } from '../log.js';
import { checkQemuArgv, withCheckpointing, withStore, type CheckpointArgs } from '../options.js';
import { asWriter } from '../writer.js';
import { Progress } from '../progress.js';
import { recoverDomain } from './recover-libvirt.js';

export interface RecoverArgs extends CheckpointArgs {
  version?: number;
  pidfile?: string;
  detach: boolean;
  'qemu-binary'?: string;
  lazy?: boolean;
}

export async function recoverHandler(a: RecoverArgs): Promise<number> {
  // One copy of the VM: nobody may be checkpointing it (a killed writer's lease runs out first).
  const log = logger.child({ vm: a.vm });
  // What the metadata can tell (no such VM or version, a broken chain) is refused before the
  // lease is taken: such a refusal leaves the store exactly as it was.
  const before = async (h: StoreHandle) => void (await planRestore(h.store, a.version));
  return asWriter(a, { retry: !a.detach, leaseWaitMs: a['lease-ttl'] + 1000, before }, async ({ h, loop }) => {
    // A VM recorded from a libvirt domain comes back as that domain, through libvirt.
    if ((await h.store.vm())?.libvirt) {
      if (a.lazy) throw new Error('--lazy: a libvirt domain is recovered through libvirt, eagerly; recover it without --lazy');
      return recoverDomain(a, h, loop);
    }
    // A new RAM file per recovery: never write under a QEMU that might still run.
    const paths = { ...vmPaths(runDir(), `${a.vm}.r${Date.now()}`) };
    const logFile = join(runDir(), `${a.vm}.qemu.log`);
    const progress = new Progress(log);
    let version: number | undefined;
    const recover = a.lazy ? recoverVmLazy : recoverVm;
    const r = await recover({
      store: h.store,
      version: a.version,
      paths,
      logFd: () => openSync(logFile, 'a'),
      qemuBinary: a['qemu-binary'],
      ft: (bin) => useFt(a['dirty-source'], bin),
      onPlan: (p) => {
        version = p.target.version;
        log.info(
          { version, base: p.base || undefined, chain: p.chain.length, ramBytes: p.vm.ramBytes },
          `restoring version ${p.target.version}` +
            (p.base ? ` (base image at version ${p.base}` : ' (from a zero image') +
            ` + ${p.chain.length} version(s)), RAM ${p.vm.ramBytes >> 20} MiB`,
        );
      },
      onProgress: (p) => progress.report({ op: 'read-checkpoint', unit: 'frames', version, ...p }),
      onStep: progress.report,
      onNoIndex: (why: string) => log.warn({ why }, `lazy recovery without page indexes (a fault waits for the read to reach its page): ${why}`),
      onRunning: (ms: number) => log.info({ runningMs: Math.round(ms) }, `guest running after ${ms.toFixed(0)} ms, its memory arriving from the store (post-copy)`),
    }).finally(() => progress.close());
    const lazy = a.lazy ? (r as RecoveredLazy) : undefined;
    if (a.pidfile) writeFileSync(a.pidfile, `${r.qemu.pid}\n`);
    loop.metrics?.recovered(a.vm, r.timings);
    log.info(
      {
        version: r.plan.target.version,
        pagesApplied: r.pagesApplied,
        loadMs: Math.round(r.timings.loadMs),
        writeMs: Math.round(r.timings.writeMs),
        startMs: Math.round(r.timings.startMs),
        pid: r.qemu.pid,
      },
      `recovered version ${r.plan.target.version}: ${r.pagesApplied} page records, ` +
        `device state ${fmtBytes(r.plan.target.deviceStateBytes)}; ` +
        (lazy
          ? `lazy: guest running after ${lazy.timings.runningMs.toFixed(0)} ms, all memory in after ${lazy.timings.residentMs.toFixed(0)} ms ` +
            `(read+verify ${lazy.timings.loadMs.toFixed(0)} ms, ${lazy.postcopy.requests} page(s) served on request); QEMU pid ${r.qemu.pid}`
          : `read+verify ${r.timings.loadMs.toFixed(0)} ms, RAM file ${r.timings.writeMs.toFixed(0)} ms, ` +
            `QEMU start+load ${r.timings.startMs.toFixed(0)} ms; guest running, QEMU pid ${r.qemu.pid}`),
    );
    process.stdout.write(
      JSON.stringify({
        vm: a.vm,
        version: r.plan.target.version,
        base: r.plan.base,
        versionsApplied: r.plan.chain.map((m) => m.version),
        pagesApplied: r.pagesApplied,
        pid: r.qemu.pid,
        ram: paths.ram,
        qmp: paths.qmp,
        recoveryMs: Math.round(r.timings.totalMs),
        // Its phases: reading and verifying every frame, writing the RAM file, QEMU's start and
        // device state.
        loadMs: Math.round(r.timings.loadMs),
        writeMs: Math.round(r.timings.writeMs),
        startMs: Math.round(r.timings.startMs),
        // Lazy: the guest ran after runningMs (recoveryMs is that wait), and all its memory was
        // in — the post-copy migration completed — after residentMs.
        ...(lazy
          ? {
              lazy: true,
              runningMs: Math.round(lazy.timings.runningMs),
              residentMs: Math.round(lazy.timings.residentMs),
              pageRequests: lazy.postcopy.requests,
              pageRequestsWaited: lazy.postcopy.waited,
              // The page indexes: used or why not; frames read before the guest ran (of all
              // frames), and those fetched out of turn for faults with the pages they placed.
              index: lazy.index.used ? 'used' : 'not used',
              ...(lazy.index.why ? { indexWhy: lazy.index.why } : {}),
              framesBeforeRunning: lazy.index.framesBeforeRunning,
              frames: lazy.index.frames,
              faultFrames: lazy.index.faults.frames,
              faultPages: lazy.index.faults.pages,
              // Where runningMs went: QEMU up (QMP), the migration stream connected, QEMU's first page request.
              qemuMs: Math.round(lazy.timings.qemuMs),
              incomingMs: Math.round(lazy.timings.incomingMs),
              firstRequestMs: Math.round(lazy.timings.firstRequestMs),
            }
          : {}),
      }) + '\n',
    );
    if (a.detach) {
      r.qmp.close();
      return 0;
    }
    await h.store.cleanupPending();
    return await checkpointLoop({
      vm: a.vm,
      store: h.store,
      qmp: r.qmp,
      ramPath: paths.ram,
      ramBytes: r.plan.vm.ramBytes,
      deviceStatePath: paths.deviceState,
      qemuExited: r.qemu.exited,
      quitVmOnStop: true,
      ftSocket: r.ft ? paths.ft : undefined,
      resumeFrom: { image: r.image, version: r.plan.target.version },
      ...loop,
    });
  });
}

export const recoverCommand: CommandModule<object, RecoverArgs> = {
  command: 'recover',
  describe:
    'Rebuild a VM from its checkpoints, resume it, and keep checkpointing it (unless --detach); ' +
    'a VM attached with --domain is re-created and resumed through libvirt (docs/libvirt.md)',
  builder: (y) =>
    withCheckpointing(withStore(y))
      .option('version', { type: 'number', describe: 'committed version to restore (default: the newest)' })
      .option('pidfile', { type: 'string', describe: 'write the new QEMU process id to this file' })
      .option('detach', { type: 'boolean', default: false, describe: 'leave the recovered VM running and exit' })
      .option('lazy', {
        type: 'boolean',
        default: false,
        describe:
          'run the guest before its memory is all read: QEMU starts as a post-copy migration destination and migsafe serves its pages from the store, those it faults on first, each checked before it is sent (docs/recovery.md)',
      })
      .option('qemu-binary', { type: 'string', describe: 'QEMU binary to use instead of the recorded one (libvirt: the <emulator>)' })
      .check((a) => checkQemuArgv(a, false, 'recover')) as never,
  handler: async (a) => {
    process.exitCode = await recoverHandler(a);
  },
};
