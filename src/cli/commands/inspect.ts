// `migsafe inspect --vm ID [--json]`: the committed versions of a VM.
import type { CommandModule } from 'yargs';
import { fmtBytes, openStore } from '../context.js';
import { withStore } from '../options.js';
import { redisAuthFrom, type RedisAuthArgs } from '../redis-auth.js';
import { applyRecordKey, withRecordKey, type RecordKeyArgs } from '../record-key.js';
import { isDurable } from '../../store/version-meta.js';

/** "yes (fsync)", "NO (replicas:1)": a version not durable by its policy stands out. */
function durableText(durable: boolean | null, policy: string | null): string {
  if (durable === null) return '?';
  return `${durable ? 'yes' : policy === 'none' ? 'no' : 'NO'} (${policy})`;
}

const SIGNATURE_TEXT = {
  verified: 'signed, verifies under --record-key',
  unsigned: 'NOT SIGNED: recovery with --record-key refuses it',
  mismatch: 'SIGNATURE DOES NOT MATCH: changed in the store after it was signed (or another key); recovery with --record-key refuses it',
};

interface InspectArgs extends RedisAuthArgs, RecordKeyArgs {
  vm: string;
  json: boolean;
  argv: boolean;
}

export const inspectCommand: CommandModule<object, InspectArgs> = {
  command: 'inspect',
  describe: 'List the committed checkpoint versions of a VM',
  builder: (y) =>
    withRecordKey(withStore(y))
      .option('json', { type: 'boolean', default: false, describe: 'print JSON' })
      // The recorded command line may hold secrets of the VM's own (a disk's password, a key file's path).
      .option('argv', { type: 'boolean', default: false, describe: 'also show the recorded QEMU command line (hidden by default: it may hold secrets)' }) as never,
  handler: async (a) => {
    const h = await openStore(a.redis, a.vm, false, redisAuthFrom(a));
    applyRecordKey(h.store, a);
    try {
      // Shown whether or not it verifies: with --record-key, what the record says is the question.
      const vm = await h.store.vm({ verify: false });
      if (!vm) throw new Error(`no VM "${a.vm}" in the store at ${h.where}`);
      const metas = await h.store.metas();
      const base = await h.store.base();
      const versions = metas.map((m) => ({
        version: m.version,
        committedAt: new Date(m.committedAt).toISOString(),
        parent: m.parent,
        pages: m.pages,
        bytesRaw: m.bytesRaw,
        bytesStored: m.bytesStored,
        pauseMs: m.pauseMs,
        deviceStateBytes: m.deviceStateBytes,
        deviceStateStored: m.deviceStateStored,
        dirtySource: m.dirtySource,
        codec: m.codec,
        stage1Pages: m.stage1Pages,
        stage2Pages: m.stage2Pages,
        /** The lease it was committed under ("host|token"), null when written unfenced. */
        writer: m.writer ?? null,
        /** The policy it was committed under, and whether it is durable by it (null: not recorded). */
        durability: m.durability ?? null,
        durable: isDurable(m),
      }));
      if (a.json) {
        process.stdout.write(
          JSON.stringify({ vm: a.vm, ramBytes: vm.ramBytes, ...(a.argv ? { argv: vm.argv } : {}), ...(vm.signature ? { record: vm.signature } : {}), base, versions }, null, 2) + '\n',
        );
        return;
      }
      process.stdout.write(`VM ${a.vm}: RAM ${fmtBytes(vm.ramBytes)}, ${versions.length} committed version(s)` +
        (base ? `, base image at version ${base}` : '') + `\n`);
      process.stdout.write(a.argv ? `QEMU: ${vm.argv.join(' ')}\n` : `QEMU: ${vm.argv.length} argument(s) recorded (inspect --argv shows them)\n`);
      if (vm.signature) process.stdout.write(`record: ${SIGNATURE_TEXT[vm.signature]}\n`);
      process.stdout.write('version  committed                 pages   stored      B/page  pause ms  device     source   durable          writer\n');
      for (const v of versions) {
        const perPage = v.pages ? v.bytesStored / v.pages : 0;
        process.stdout.write(
          `${String(v.version).padStart(7)}  ${v.committedAt}  ${String(v.pages).padStart(6)}  ${fmtBytes(v.bytesStored).padStart(10)}  ` +
            `${perPage.toFixed(1).padStart(6)}  ${v.pauseMs.toFixed(1).padStart(8)}  ${fmtBytes(v.deviceStateBytes).padStart(9)}  ${v.dirtySource.padEnd(7)}  ${durableText(v.durable, v.durability).padEnd(15)}  ${v.writer ?? '-'}\n`,
        );
      }
    } finally {
      h.close();
    }
  },
};
