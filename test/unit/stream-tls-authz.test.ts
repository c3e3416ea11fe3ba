// The destination QEMU takes the migration stream from one certificate only (stream-tls.ts,
// tls-authz): two real QEMUs (Debian's, which has gnutls) migrate over TLS on loopback with the
// credentials enableStreamTls gives them. A source with the named certificate migrates; a source
// with another certificate of the same CA is refused by the destination QEMU. The name is a
// multi-RDN subject with an escaped comma, so tlsIdentity must match GnuTLS's DN exactly.
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { QmpClient } from '../../src/qemu/qmp.js';
import { enableStreamTls, tlsIdentity } from '../../src/migration/stream-tls.js';
import type { TlsConfig } from '../../src/ha/tls.js';
import { makeCa, makeCert } from '../helpers/tls.js';

const QEMU = '/usr/bin/qemu-system-x86_64';
const dir = mkdtempSync(join(tmpdir(), 'migsafe-authz-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const ca = makeCa(join(dir, 'ca'));
const SRC_SUBJECT = '/C=DE/O=migsafe, test/CN=src-agent';
const dstDir = makeCert(ca, join(dir, 'dst'), { cn: 'dst', ips: ['127.0.0.1'] });
const srcDir = makeCert(ca, join(dir, 'src'), { cn: 'src-agent', subject: SRC_SUBJECT });
const otherDir = makeCert(ca, join(dir, 'other'), { cn: 'other-agent', subject: '/C=DE/O=migsafe, test/CN=other-agent' });

function tlsOf(d: string): TlsConfig {
  const f = { cert: join(d, 'cert.pem'), key: join(d, 'key.pem'), ca: join(d, 'ca.pem') };
  return { cert: readFileSync(f.cert), key: readFileSync(f.key), ca: readFileSync(f.ca), allow: [], files: f };
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

async function qemu(t: Test, name: string, extra: string[]): Promise<QmpClient> {
  const sock = join(dir, `${name}.qmp`);
  const log = openSync(join(dir, `${name}.log`), 'w');
  const p: ChildProcess = spawn(QEMU, ['-accel', 'tcg', '-M', 'pc', '-m', '32', '-nodefaults', '-display', 'none', '-qmp', `unix:${sock},server=on,wait=off`, ...extra], { stdio: ['ignore', log, log] });
  closeSync(log);
  t.teardown(() => p.kill('SIGKILL'));
  const qmp = await QmpClient.connect(sock, 20_000);
  t.teardown(() => qmp.close());
  return qmp;
}

/** The source's migration outcome: 'completed' or 'failed' (with QEMU's error), and the destination QEMU's log. */
async function migrate(t: Test, srcTls: TlsConfig, allow: string): Promise<{ status: string; error?: string; dstLog: () => string }> {
  const port = await freePort();
  const dst = await qemu(t, `dst-${port}`, ['-incoming', 'defer']);
  const src = await qemu(t, `src-${port}`, []);
  await enableStreamTls(dst, { tls: tlsOf(dstDir), endpoint: 'server', runDir: dir, allowIdentity: allow });
  await dst.execute('migrate-incoming', { uri: `tcp:127.0.0.1:${port}` });
  await enableStreamTls(src, { tls: srcTls, endpoint: 'client', runDir: dir, hostname: '127.0.0.1' });
  await src.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
  for (let i = 0; i < 600; i++) {
    const m = await src.execute<{ status: string; 'error-desc'?: string }>('query-migrate');
    if (m.status === 'completed' || m.status === 'failed') return { status: m.status, error: m['error-desc'], dstLog: () => readFileSync(join(dir, `dst-${port}.log`), 'utf8') };
    await sleep(100);
  }
  return { status: 'timed out', dstLog: () => '' };
}

t.test('tlsIdentity is the subject in the certificate order, RDNs comma-separated, escapes kept', async (t) => {
  t.equal(tlsIdentity(readFileSync(join(srcDir, 'cert.pem'))), 'C=DE,O=migsafe\\, test,CN=src-agent');
});

t.test('the destination QEMU takes the stream from the named certificate', async (t) => {
  const r = await migrate(t, tlsOf(srcDir), tlsIdentity(readFileSync(join(srcDir, 'cert.pem'))));
  t.equal(r.status, 'completed', `migrated (${r.error ?? 'no error'})`);
});

t.test('and refuses another certificate the same CA signed', async (t) => {
  const r = await migrate(t, tlsOf(otherDir), tlsIdentity(readFileSync(join(srcDir, 'cert.pem'))));
  t.equal(r.status, 'failed', `the migration failed (${r.error ?? 'no error'})`);
  // Said by the destination QEMU, so the refusal is the authorisation's, not a broken certificate's.
  await sleep(200);
  t.match(r.dstLog(), /authz check for C=DE,O=migsafe\\, test,CN=other-agent is denied/, 'the destination QEMU denied that certificate by name');
});
