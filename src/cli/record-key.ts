// `--record-key FILE`: the key VM records are signed with (src/store/record-mac.ts), for the
// commands that write a record or start QEMU from one (run, attach, recover, sidecar, agent)
// and for `inspect`, which shows whether the record verifies.
import type { Argv } from 'yargs';
import { readSecretFile } from './redis-auth.js';
import { MIN_RECORD_KEY_BYTES } from '../store/record-mac.js';
import type { CheckpointStore } from '../store/checkpoint-store.js';

export interface RecordKeyArgs {
  'record-key'?: string;
}

export function withRecordKey<T>(y: Argv<T>) {
  return y
    .option('record-key', {
      type: 'string',
      describe: `sign the VM record (its QEMU command line) with the key in FILE, and start QEMU only from a record that verifies (first line, ≥ ${MIN_RECORD_KEY_BYTES} bytes, not readable by others; e.g. \`openssl rand -hex 32\`)`,
    })
    .check((a) => {
      recordKeyFrom(a as RecordKeyArgs);
      return true;
    });
}

/** The key --record-key names (read and checked), or undefined without one. */
export function recordKeyFrom(a: RecordKeyArgs): Buffer | undefined {
  const file = a['record-key'];
  if (file === undefined || file === '') return undefined;
  const key = Buffer.from(readSecretFile(file, 'record-key', 'the key'), 'utf8');
  if (key.length < MIN_RECORD_KEY_BYTES) {
    throw new Error(`--record-key ${file}: its key is ${key.length} bytes, too short to sign with: put ${MIN_RECORD_KEY_BYTES} bytes or more on its first line (\`openssl rand -hex 32 > ${file}\`)`);
  }
  return key;
}

/** Makes `store` sign and verify VM records when --record-key is given. */
export function applyRecordKey(store: CheckpointStore, a: RecordKeyArgs): void {
  const key = recordKeyFrom(a);
  if (key) store.signRecordsWith(key);
}
