// Mutual TLS for the agents' control channel: the certificate files, who a peer is (its
// certificate's CN and subjectAltNames) and whether it may talk to us (--tls-allow).
//
// Both ends present a certificate and verify the other's against the CA (the server requests
// the client's and refuses it unless the CA signed it; the client checks the server's CA and that
// its certificate names the address or host it dialled). On top of that, a peer is authorised
// when one of its names is in the allow list; an empty list means any certificate the CA signed.
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Socket } from 'node:net';
import type { PeerCertificate, TLSSocket } from 'node:tls';

export interface TlsConfig {
  cert: Buffer;
  key: Buffer;
  ca: Buffer;
  /** Names (CN or subjectAltName) whose certificates are obeyed; empty: any the CA signed. */
  allow: string[];
  /**
   * Per VM, the only names trusted with it (--tls-allow-vm): requests about it are obeyed only
   * from them, and it migrates only to them. A VM not listed: anyone in `allow`.
   */
  vmAllow?: Record<string, string[]>;
  /** Where the files came from, for logs. */
  files: { cert: string; key: string; ca: string };
}

export interface TlsFiles {
  dir?: string;
  cert?: string;
  key?: string;
  ca?: string;
  allow?: string[];
}

/** Reads the certificate files; undefined when none was given. Errors name the option. */
export function loadTls(f: TlsFiles): TlsConfig | undefined {
  const some = [f.cert, f.key, f.ca].filter((x) => x !== undefined).length;
  if (f.dir === undefined && some === 0) {
    if (f.allow?.length) throw new Error('--tls-allow needs TLS: give --tls-dir DIR or --tls-cert, --tls-key and --tls-ca');
    return undefined;
  }
  if (f.dir !== undefined && some > 0) throw new Error('give either --tls-dir or --tls-cert/--tls-key/--tls-ca, not both');
  if (f.dir === undefined && some < 3) {
    const missing = (['cert', 'key', 'ca'] as const).filter((k) => f[k] === undefined).map((k) => `--tls-${k}`);
    throw new Error(`TLS needs --tls-cert, --tls-key and --tls-ca together: ${missing.join(', ')} missing (or give --tls-dir DIR with cert.pem, key.pem, ca.pem)`);
  }
  const files =
    f.dir !== undefined
      ? { cert: join(f.dir, 'cert.pem'), key: join(f.dir, 'key.pem'), ca: join(f.dir, 'ca.pem') }
      : { cert: f.cert!, key: f.key!, ca: f.ca! };
  const read = (k: 'cert' | 'key' | 'ca'): Buffer => {
    const opt = f.dir !== undefined ? `--tls-dir (${k}.pem)` : `--tls-${k}`;
    try {
      const b = readFileSync(files[k]);
      if (!b.includes('-----BEGIN ')) throw new Error('not a PEM file');
      return b;
    } catch (e) {
      throw new Error(`${opt} ${files[k]}: ${(e as Error).message}: give a PEM file${k === 'ca' ? ' (the CA certificate)' : k === 'key' ? ' (the private key)' : ' (the certificate)'}`);
    }
  };
  const cfg: TlsConfig = { cert: read('cert'), key: read('key'), ca: read('ca'), allow: (f.allow ?? []).map((s) => s.trim()).filter(Boolean), files };
  const perm = statSync(files.key).mode & 0o777;
  if (perm & 0o006) throw new Error(`${f.dir !== undefined ? '--tls-dir (key.pem)' : '--tls-key'} ${files.key}: open to every user (mode ${perm.toString(8)}): chmod 600 it`);
  return cfg;
}

/** A certificate's names: its subject CN and every DNS / IP / email / URI subjectAltName. */
export function certNames(c: Pick<PeerCertificate, 'subject' | 'subjectaltname'> | undefined): string[] {
  if (!c) return [];
  const out: string[] = [];
  const cn = c.subject?.CN as string | string[] | undefined;
  for (const n of Array.isArray(cn) ? cn : cn ? [cn] : []) out.push(n);
  for (const part of (c.subjectaltname ?? '').split(',')) {
    const m = /^\s*(?:DNS|IP Address|email|URI):(.+)$/.exec(part);
    if (m && !out.includes(m[1]!.trim())) out.push(m[1]!.trim());
  }
  return out;
}

/** Whether a peer with these names may talk to us. */
export function authorised(names: string[], allow: string[]): boolean {
  return allow.length === 0 || names.some((n) => allow.includes(n));
}

/** Why a peer with these names may not be trusted with `vm` (--tls-allow-vm), or undefined when it may. */
export function vmRefusal(names: string[], vm: string, cfg: Pick<TlsConfig, 'vmAllow'> | undefined): string | undefined {
  const only = cfg?.vmAllow?.[vm];
  if (!only || names.some((n) => only.includes(n))) return undefined;
  return `certificate of ${names.map((n) => `"${n}"`).join(', ') || '(no name)'} is not trusted with VM ${vm} (--tls-allow-vm ${vm}=${only.join(',')})`;
}

/** The names of the certificate a TLS peer presented; none on a plain socket. */
export function socketNames(sock: Socket): string[] {
  const get = (sock as Partial<TLSSocket>).getPeerCertificate;
  return get ? certNames(get.call(sock)) : [];
}

/** Why the peer on this socket is refused, or undefined when it is authorised. */
export function refusal(sock: TLSSocket, cfg: TlsConfig): string | undefined {
  const cert = sock.getPeerCertificate();
  if (!cert || Object.keys(cert).length === 0) return 'no client certificate presented';
  if (!sock.authorized) {
    const names = certNames(cert).map((n) => `"${n}"`).join(', ') || '(no name)';
    return `certificate of ${names} not signed by the CA ${cfg.files.ca} (${String(sock.authorizationError ?? 'not verified')})`;
  }
  const names = certNames(cert);
  if (authorised(names, cfg.allow)) return undefined;
  return `certificate of ${names.map((n) => `"${n}"`).join(', ') || '(no name)'} is not in --tls-allow`;
}

/** Names of the peer's certificate, for logs. */
export function peerName(sock: TLSSocket): string {
  return certNames(sock.getPeerCertificate()).join(',') || '(no name)';
}

/** The loopback addresses, the only ones an agent without TLS listens on or talks to. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || /^::ffff:127\./.test(h);
}

export const TLS_HINT = 'give --tls-dir DIR (cert.pem, key.pem, ca.pem) or --tls-cert FILE --tls-key FILE --tls-ca FILE';
