// QEMU's own migration TLS: with TLS configured (--tls-*), the guest's RAM and device state go
// from QEMU to QEMU encrypted and both ends authenticated, with the agent's own certificates.
//
// Each QEMU gets a `tls-creds-x509` object (QMP object-add) made from a private directory (0700,
// files 0600) holding QEMU's file names for the agent's certificate files — ca-cert.pem, and
// server-cert.pem/server-key.pem at the destination, client-cert.pem/client-key.pem at the
// source — with verify-peer on: the destination QEMU refuses a source QEMU without a
// certificate the CA signed, the source QEMU checks the destination's against the CA and the
// name it dialled (tls-hostname). QEMU reads the files when the object is made, so the
// directory is removed at once: no copy of the key outlives this call.
// Then `migrate-set-parameters tls-creds` makes the migration (pre-copy, post-copy and its
// return path alike) run over TLS. Without TLS nothing here runs and nothing changes.
// The CA alone would let any QEMU with a certificate it signed feed this destination a guest, so
// the destination also names the one certificate it takes the stream from (`tls-authz`, an
// authz-simple object): that of the agent which asked for the migration and was authenticated
// on the control channel — the source QEMU presents the same certificate.
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import type { QmpClient } from '../qemu/qmp.js';
import type { Peer } from '../ha/peer.js';
import type { TlsConfig } from '../ha/tls.js';

/** The id of migsafe's credentials object in a QEMU. */
export const STREAM_TLS_ID = 'migsafe-migration-tls';
/** The id of the destination's authorisation object (the one source certificate it takes). */
export const STREAM_AUTHZ_ID = 'migsafe-migration-authz';

/**
 * A certificate's subject as QEMU's TLS authorisation compares it: GnuTLS's distinguished name
 * (gnutls_x509_crt_get_dn), its RDNs in the certificate's order, comma-separated, with RFC 4514
 * escapes — the order and escapes Node's X509Certificate.subject has, one RDN per line.
 */
export function tlsIdentity(cert: Buffer | string): string {
  return new X509Certificate(cert).subject.split('\n').join(',');
}

export type TlsEndpoint = 'server' | 'client';

/** The subject of the certificate a TLS peer presented (authenticated before it reached a Peer). */
export function peerIdentity(p: Peer): string {
  const raw = (p.sock as Partial<TLSSocket>).getPeerCertificate?.()?.raw;
  if (!raw?.length) throw new Error(`the peer at ${p.remoteAddress} presented no certificate: a migration over TLS is taken only from an authenticated agent`);
  return tlsIdentity(raw);
}

/** The files QEMU's tls-creds-x509 reads from its `dir` for an endpoint, with their contents. */
export function credsFiles(tls: Pick<TlsConfig, 'cert' | 'key' | 'ca'>, endpoint: TlsEndpoint): Record<string, Buffer> {
  return { 'ca-cert.pem': tls.ca, [`${endpoint}-cert.pem`]: tls.cert, [`${endpoint}-key.pem`]: tls.key };
}

/** What to tell the operator when QEMU refuses the credentials object. */
export function explainCredsError(msg: string, qemu: string): string {
  if (/gnutls/i.test(msg)) {
    return (
      `${qemu} cannot encrypt the migration stream (${msg}): it was built without gnutls. ` +
      'Use a QEMU with TLS (Debian\'s qemu-system-x86 has it; the patched build from qemu-patches/build.sh configures --enable-gnutls, re-run it) — ' +
      'agents with --tls-* never migrate a guest in clear'
    );
  }
  return `${qemu} refused the migration TLS credentials (made from the --tls-* files): ${msg}`;
}

/**
 * Gives this QEMU migration TLS credentials from the agent's certificate files and makes its
 * migrations use them. `hostname` (source only): the name the destination's certificate must
 * carry — the host the agent dialled and authenticated. `allowIdentity` (destination only): the
 * one certificate subject (tlsIdentity) whose QEMU may send the stream.
 */
export async function enableStreamTls(
  qmp: QmpClient,
  o: { tls: TlsConfig; endpoint: TlsEndpoint; runDir: string; hostname?: string; qemu?: string; allowIdentity?: string },
): Promise<void> {
  const dir = mkdtempSync(join(o.runDir, 'migration-tls-')); // mode 0700
  try {
    for (const [name, data] of Object.entries(credsFiles(o.tls, o.endpoint))) writeFileSync(join(dir, name), data, { mode: 0o600 });
    // A source whose earlier migration failed still has the object: make it anew from today's files.
    await qmp.execute('object-del', { id: STREAM_TLS_ID }).catch(() => {});
    try {
      await qmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id: STREAM_TLS_ID, dir, endpoint: o.endpoint, 'verify-peer': true });
    } catch (e) {
      throw new Error(explainCredsError((e as Error).message, o.qemu ?? 'QEMU'));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  if (o.allowIdentity !== undefined) {
    await qmp.execute('object-del', { id: STREAM_AUTHZ_ID }).catch(() => {});
    await qmp.execute('object-add', { 'qom-type': 'authz-simple', id: STREAM_AUTHZ_ID, identity: o.allowIdentity });
  }
  await qmp.execute('migrate-set-parameters', {
    'tls-creds': STREAM_TLS_ID,
    ...(o.hostname !== undefined ? { 'tls-hostname': o.hostname } : {}),
    ...(o.allowIdentity !== undefined ? { 'tls-authz': STREAM_AUTHZ_ID } : {}),
  });
}
