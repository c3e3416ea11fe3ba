// Migration TLS credentials as they reach QEMU (stream-tls.ts): the agent's certificate files
// under QEMU's names in a 0700 directory (files 0600) that exists only while QEMU reads it,
// object-add tls-creds-x509 with verify-peer, then migrate-set-parameters tls-creds (and
// tls-hostname at the source); a QEMU without gnutls is refused with the fix named.
// (A real migration over it: test/e2e/migration-tls.test.ts.)
import t from 'tap';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QmpClient } from '../../src/qemu/qmp.js';
import { enableStreamTls, STREAM_TLS_ID } from '../../src/migration/stream-tls.js';
import type { TlsConfig } from '../../src/ha/tls.js';
import { fakeQmp, type QmpCommand } from '../helpers/fake-qmp.js';

const tls = {
  cert: Buffer.from('-----BEGIN CERTIFICATE-----\ncert\n'),
  key: Buffer.from('-----BEGIN PRIVATE KEY-----\nkey\n'),
  ca: Buffer.from('-----BEGIN CERTIFICATE-----\nca\n'),
  allow: [],
  files: { cert: '/x/cert.pem', key: '/x/key.pem', ca: '/x/ca.pem' },
} satisfies TlsConfig;

function runDir(t: { teardown(fn: () => unknown): void }): string {
  const d = mkdtempSync(join(tmpdir(), 'migsafe-streamtls-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

for (const endpoint of ['server', 'client'] as const) {
  t.test(`${endpoint}: the credentials object from a private directory, then tls-creds`, async (t) => {
    const cmds: QmpCommand[] = [];
    let seen: { dirMode: number; files: Record<string, { mode: number; text: string }> } | undefined;
    const q = await fakeQmp(t, (cmd) => {
      cmds.push(cmd);
      if (cmd.execute === 'object-add') {
        const dir = String(cmd.arguments?.dir);
        seen = {
          dirMode: statSync(dir).mode & 0o777,
          files: Object.fromEntries(readdirSync(dir).map((f) => [f, { mode: statSync(join(dir, f)).mode & 0o777, text: readFileSync(join(dir, f), 'utf8') }])),
        };
      }
      if (cmd.execute === 'object-del') return { error: { class: 'GenericError', desc: `object '${STREAM_TLS_ID}' not found` } };
      return { return: {} };
    });
    const qmp = await QmpClient.connect(q.path, 5_000);
    t.teardown(() => qmp.close());
    const rd = runDir(t);
    await enableStreamTls(qmp, { tls, endpoint, runDir: rd, ...(endpoint === 'client' ? { hostname: '10.0.0.2' } : {}) });
    const add = cmds.find((c) => c.execute === 'object-add')!;
    t.same({ ...add.arguments, dir: undefined }, { 'qom-type': 'tls-creds-x509', id: STREAM_TLS_ID, dir: undefined, endpoint, 'verify-peer': true }, 'object-add tls-creds-x509, verify-peer on');
    t.equal(seen?.dirMode, 0o700, 'the directory is private (0700)');
    t.same(seen?.files, {
      'ca-cert.pem': { mode: 0o600, text: tls.ca.toString() },
      [`${endpoint}-cert.pem`]: { mode: 0o600, text: tls.cert.toString() },
      [`${endpoint}-key.pem`]: { mode: 0o600, text: tls.key.toString() },
    }, `QEMU's ${endpoint} file names, the agent's certificate, key and CA, mode 0600`);
    t.notOk(existsSync(String(add.arguments?.dir)), 'the directory is gone once QEMU has read it');
    t.same(readdirSync(rd), [], 'nothing is left in the run directory');
    const set = cmds.find((c) => c.execute === 'migrate-set-parameters')!;
    t.same(set.arguments, { 'tls-creds': STREAM_TLS_ID, ...(endpoint === 'client' ? { 'tls-hostname': '10.0.0.2' } : {}) }, 'the migration uses the credentials');
    t.same(cmds.map((c) => c.execute), ['object-del', 'object-add', 'migrate-set-parameters'], 'an older object of an earlier migration is replaced');
  });
}

t.test('a QEMU built without gnutls is refused, naming the fix; no parameter is set', async (t) => {
  const cmds: string[] = [];
  const q = await fakeQmp(t, (cmd) => {
    cmds.push(String(cmd.execute));
    if (cmd.execute === 'object-add') return { error: { class: 'GenericError', desc: 'TLS credentials support requires GNUTLS' } };
    return { return: {} };
  });
  const qmp = await QmpClient.connect(q.path, 5_000);
  t.teardown(() => qmp.close());
  const rd = runDir(t);
  await t.rejects(
    enableStreamTls(qmp, { tls, endpoint: 'client', runDir: rd, qemu: '/opt/q/bin/qemu-system-x86_64' }),
    /\/opt\/q\/bin\/qemu-system-x86_64 cannot encrypt the migration stream \(.*requires GNUTLS\): it was built without gnutls\. .*--enable-gnutls.*never migrate a guest in clear/,
  );
  t.notOk(cmds.includes('migrate-set-parameters'), 'no migration parameter was set');
  t.same(readdirSync(rd), [], 'the key files were removed all the same');
});
