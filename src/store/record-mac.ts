// A VM record signed with a key the store does not hold (`--record-key FILE`): recovery starts
// the QEMU command line the record names, so anyone who can write to the store could otherwise
// make a recovering host run a command of their choosing. Writers sign what they record; a
// reader given the key refuses a record whose signature is missing or does not match.
import { createHmac, timingSafeEqual } from 'node:crypto';

/** What the signature covers: everything a recovery starts QEMU from. */
export interface SignedFields {
  format: number;
  argv: readonly string[];
  cwd: string;
  ramBytes: number;
  libvirt?: { uri: string; domain: string; xml: string };
}

/** Shortest key accepted: HMAC-SHA256 wants at least its output's 32 bytes of secret. */
export const MIN_RECORD_KEY_BYTES = 32;

/** The record's signature (hex): bound to the VM id, so a record copied to another id fails. */
export function recordMac(key: Buffer, vmId: string, f: SignedFields): string {
  const l = f.libvirt;
  const canonical = JSON.stringify(['migsafe-record-v1', vmId, f.format, f.argv, f.cwd, f.ramBytes, l ? [l.uri, l.domain, l.xml] : null]);
  return createHmac('sha256', key).update(canonical).digest('hex');
}

export type RecordSignature = 'verified' | 'unsigned' | 'mismatch';

/** Whether `mac` (the record's recordMac field) is the signature of these fields under `key`. */
export function checkRecordMac(key: Buffer, vmId: string, f: SignedFields, mac: string | undefined): RecordSignature {
  if (!mac) return 'unsigned';
  const want = Buffer.from(recordMac(key, vmId, f), 'hex');
  const got = /^[0-9a-f]{64}$/.test(mac) ? Buffer.from(mac, 'hex') : Buffer.alloc(0);
  return got.length === want.length && timingSafeEqual(got, want) ? 'verified' : 'mismatch';
}

/** The error a reader holding the key gives for a record that does not verify. */
export function recordSignatureError(vmId: string, s: Exclude<RecordSignature, 'verified'>): Error {
  return new Error(
    s === 'unsigned'
      ? `VM "${vmId}": its record in the store is not signed (written without --record-key, or by an older migsafe) and --record-key demands a signed one: nothing was started. ` +
          'Sign it by running or attaching the VM with --record-key, or recover without --record-key if you trust everyone who can write to the store'
      : `VM "${vmId}": its record in the store does not match its signature under --record-key: its QEMU command line, directory, RAM size or libvirt domain ` +
          'was changed in the store after it was signed (or the key is another one): refused, nothing was started. See `migsafe inspect --argv --record-key FILE`',
  );
}
