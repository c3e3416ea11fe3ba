// `npm run sidecar -- …`: `run`, or `recover` with --recover — one entry point for the sidecar.
import type { CommandModule } from 'yargs';
import { checkQemuArgv, withCheckpointing, withStore } from '../options.js';
import { runHandler, type RunArgs } from './run.js';
import { recoverHandler, type RecoverArgs } from './recover.js';

type SidecarArgs = RunArgs & RecoverArgs & { recover: boolean };

export const sidecarCommand: CommandModule<object, SidecarArgs> = {
  command: 'sidecar',
  describe: 'Checkpoint a VM (as `run`), or with --recover bring it back (as `recover`)',
  builder: (y) =>
    withCheckpointing(withStore(y))
      .option('recover', { type: 'boolean', default: false, describe: 'recover the VM instead of starting it' })
      .option('version', { type: 'number', describe: 'with --recover: version to restore' })
      .option('pidfile', { type: 'string', describe: 'write the QEMU process id to this file' })
      .option('detach', { type: 'boolean', default: false, describe: 'with --recover: exit once the VM runs' })
      .option('qemu-binary', { type: 'string', describe: 'with --recover: QEMU binary to use' })
      .check((a) => {
        const only = (['version', 'detach', 'qemu-binary'] as const).find((k) => a[k] !== undefined && a[k] !== false);
        if (only && !a.recover) throw new Error(`--${only} is for recovering (with --recover): add --recover, or leave --${only} out`);
        return checkQemuArgv(a, !a.recover, a.recover ? 'sidecar --recover' : 'sidecar');
      })
      .usage('$0 sidecar --vm ID [options] -- <qemu argv>\n$0 sidecar --recover --vm ID [options]') as never,
  handler: async (a) => {
    process.exitCode = a.recover ? await recoverHandler(a) : await runHandler(a);
  },
};
