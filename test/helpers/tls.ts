// Certificates for tests, made with Debian's openssl: a CA, and leaf certificates it signs (EC
// P-256, so a whole set takes a fraction of a second). A leaf's directory is what `--tls-dir`
// takes: cert.pem, key.pem (mode 0600), ca.pem.
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface TestCa {
  dir: string;
  cert: string;
  key: string;
}

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** A self-signed CA in `dir`. */
export function makeCa(dir: string, name = 'migsafe test CA'): TestCa {
  mkdirSync(dir, { recursive: true });
  const ca = { dir, cert: join(dir, 'ca.pem'), key: join(dir, 'ca.key') };
  openssl(['req', '-x509', ...EC, '-keyout', ca.key, '-out', ca.cert, '-days', '2', '-subj', `/CN=${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  return ca;
}

/**
 * A leaf certificate signed by `ca` in `dir` (cert.pem, key.pem, ca.pem), for a server and a client:
 * subject CN `cn` (or the whole `subject`, openssl's /A=x/B=y form), subjectAltNames the IPs and DNS names given.
 */
export function makeCert(ca: TestCa, dir: string, o: { cn: string; ips?: string[]; dns?: string[]; subject?: string }): string {
  mkdirSync(dir, { recursive: true });
  const key = join(dir, 'key.pem');
  const csr = join(dir, 'req.csr');
  const ext = join(dir, 'ext.cnf');
  const san = [...(o.ips ?? []).map((i) => `IP:${i}`), ...(o.dns ?? []).map((d) => `DNS:${d}`)];
  writeFileSync(
    ext,
    [san.length ? `subjectAltName=${san.join(',')}` : '', 'basicConstraints=CA:FALSE', 'keyUsage=digitalSignature', 'extendedKeyUsage=serverAuth,clientAuth', ''].join('\n'),
  );
  openssl(['req', ...EC, '-keyout', key, '-out', csr, '-subj', o.subject ?? `/CN=${o.cn}`]);
  openssl(['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-out', join(dir, 'cert.pem'), '-days', '2', '-extfile', ext]);
  chmodSync(key, 0o600);
  copyFileSync(ca.cert, join(dir, 'ca.pem'));
  return dir;
}
