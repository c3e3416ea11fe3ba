// The control protocol's checks: every field of a request, reply and notice is checked before
// use, the migration URI is built locally (tcp: to the peer's own address), never taken from the
// wire; the TLS helpers (names of a certificate, the allow rule, loopback, the certificate files).
import t from 'tap';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkLeaseNotice, checkMigrateRequest, checkPrepareReply, checkPrepareRequest, migrationUri } from '../../src/migration/protocol.js';
import { parseAddr, requireTlsOrLoopback } from '../../src/ha/peer.js';
import { authorised, certNames, isLoopback, loadTls, vmRefusal } from '../../src/ha/tls.js';
import { vmAllowFromArgs } from '../../src/cli/tls-options.js';
import { makeCa, makeCert } from '../helpers/tls.js';

t.test('the prepare reply names a port; a URI in it never reaches QEMU', async (t) => {
  const peer = '10.0.0.2';
  t.same(checkPrepareReply({ host: 'dst', port: 7401 }, peer), { host: 'dst', port: 7401 });
  for (const uri of ['exec:touch /tmp/x', 'unix:/run/qemu.sock', 'fd:3', 'rdma:10.0.0.2:7401', 'file:/tmp/x', 'EXEC:sh', ' tcp:1.2.3.4:1', 42, null]) {
    t.throws(() => checkPrepareReply({ uri, host: 'dst', port: 7401 }, peer), /refusing migration URI .*only tcp: migrations are made/, `uri ${JSON.stringify(uri)} refused`);
  }
  // A tcp: URI naming some other host is not used: the URI is made from the peer's address.
  const r = checkPrepareReply({ uri: 'tcp:192.0.2.66:1', host: 'dst', port: 7401 }, peer);
  t.equal(migrationUri(peer, r.port), 'tcp:10.0.0.2:7401', 'built from the peer address and the port only');
  for (const port of [0, 65536, -1, 7401.5, '7401', NaN, undefined, null, 1e20]) {
    t.throws(() => checkPrepareReply({ host: 'dst', port }, peer), /"port" must be a whole number in 1\.\.65535/, `port ${String(port)}`);
  }
  for (const host of ['', 'a|b', 'x y', '../x', 'a'.repeat(65), 5, undefined]) {
    t.throws(() => checkPrepareReply({ host, port: 1 }, peer), /"host" must be 1-64 letters/, `host ${JSON.stringify(host)}`);
  }
  for (const v of [null, 'tcp:1.2.3.4:5', [1], 7]) t.throws(() => checkPrepareReply(v, peer), /must be an object/);
});

t.test('the migration URI: tcp to an IP address, nothing else', async (t) => {
  t.equal(migrationUri('10.1.2.3', 7401), 'tcp:10.1.2.3:7401');
  t.equal(migrationUri('::ffff:10.1.2.3', 1), 'tcp:10.1.2.3:1', 'an IPv4-mapped address');
  t.equal(migrationUri('fd00::2', 65535), 'tcp:[fd00::2]:65535');
  t.throws(() => migrationUri('10.1.2.3', 0), /not in 1\.\.65535/);
  t.throws(() => migrationUri('10.1.2.3', 70000), /not in 1\.\.65535/);
  for (const a of ['', 'evil.example', '10.1.2.3:9;exec:x', 'exec:sh']) t.throws(() => migrationUri(a, 7401), /not an IP address/, a);
});

t.test('migrate and prepare requests are checked field by field', async (t) => {
  t.same(checkMigrateRequest({ op: 'migrate', id: 1, vm: 'm1', to: '10.0.0.2:7400', mode: 'postcopy', maxBandwidth: 16 << 20 }), {
    vm: 'm1', to: '10.0.0.2:7400', mode: 'postcopy', maxBandwidth: 16 << 20, postcopyBandwidth: undefined, postcopyAfterMs: undefined,
  });
  t.equal(checkMigrateRequest({ vm: 'm1', to: 'h:1' }).mode, 'precopy', 'mode defaults to pre-copy');
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ to: 'h:1' }, /"vm" must be a VM id/],
    [{ vm: '../x', to: 'h:1' }, /invalid VM id/],
    [{ vm: 'm', to: 'h' }, /"to": "h" is not HOST:PORT/],
    [{ vm: 'm', to: 'h:0' }, /is not HOST:PORT/],
    [{ vm: 'm', to: 'h:99999' }, /is not HOST:PORT/],
    [{ vm: 'm', to: ['h:1'] }, /"to" must be HOST:PORT/],
    [{ vm: 'm', to: 'h:1', mode: 'exec' }, /"mode" must be precopy, postcopy, hybrid/],
    [{ vm: 'm', to: 'h:1', maxBandwidth: -5 }, /"maxBandwidth" must be a whole number/],
    [{ vm: 'm', to: 'h:1', maxBandwidth: '1e9' }, /"maxBandwidth" must be a whole number/],
    [{ vm: 'm', to: 'h:1', postcopyAfterMs: 1.5 }, /"postcopyAfterMs" must be a whole number/],
    [{ vm: 'm', to: 'h:1', postcopyBandwidth: Infinity }, /"postcopyBandwidth"/],
  ];
  for (const [m, re] of bad) t.throws(() => checkMigrateRequest(m), re, JSON.stringify(m));
  t.same(checkPrepareRequest({ vm: 'm1', mode: 'hybrid', from: 'src' }), { vm: 'm1', mode: 'hybrid', from: 'src' });
  t.throws(() => checkPrepareRequest({ vm: 'm1', mode: 'hybrid' }), /prepare request "from": "host" must be/);
  t.throws(() => checkPrepareRequest({ vm: 'm1', from: 'src' }), /"mode" must be/, 'prepare names its mode');
});

t.test('the lease notice', async (t) => {
  t.same(checkLeaseNotice({ token: 7, version: 0 }), { token: 7, version: 0 });
  for (const d of [{ token: 0, version: 1 }, { token: '7', version: 1 }, { token: 7 }, { token: 7, version: -1 }, null, 'x']) {
    t.throws(() => checkLeaseNotice(d), /lease notice/, JSON.stringify(d));
  }
});

t.test('addresses and the loopback rule', async (t) => {
  t.same(parseAddr('10.0.0.1:7400'), { host: '10.0.0.1', port: 7400 });
  t.same(parseAddr('[::1]:7400'), { host: '::1', port: 7400 });
  for (const a of ['10.0.0.1', ':7400', '10.0.0.1:', '10.0.0.1:0x10', '10.0.0.1:+5', 'a b:1', '10.0.0.1:70000']) t.throws(() => parseAddr(a), /is not HOST:PORT/, a);
  for (const h of ['127.0.0.1', '127.1.2.3', '::1', '[::1]', 'localhost', '::ffff:127.0.0.1']) t.ok(isLoopback(h), `${h} is loopback`);
  for (const h of ['0.0.0.0', '::', '10.0.0.1', '128.0.0.1', 'example.com', '127.0.0.1.example.com']) t.notOk(isLoopback(h), `${h} is not`);
  t.doesNotThrow(() => requireTlsOrLoopback('127.0.0.1:7400', undefined, '--listen'));
  t.throws(() => requireTlsOrLoopback('0.0.0.0:7400', undefined, '--listen'), /--listen 0\.0\.0\.0:7400 is not a loopback address and TLS is off: give --tls-dir/);
});

t.test('certificate names and --tls-allow', async (t) => {
  const c = { subject: { CN: 'src' }, subjectaltname: 'DNS:src.example, IP Address:10.0.0.1, email:ops@example' } as never;
  t.same(certNames(c), ['src', 'src.example', '10.0.0.1', 'ops@example']);
  t.same(certNames(undefined), []);
  t.ok(authorised(['src'], []), 'no list: any certificate the CA signed');
  t.ok(authorised(['x', 'src.example'], ['src.example', 'dst']), 'a SAN in the list');
  t.notOk(authorised(['intruder'], ['src', 'dst']), 'not in the list');
  t.notOk(authorised([], ['src']), 'no names');
});

t.test('--tls-allow-vm: the peers trusted with a VM', async (t) => {
  const cfg = { vmAllow: { web1: ['operator', 'host-b'] } };
  t.equal(vmRefusal(['operator'], 'web1', cfg), undefined, 'a listed name');
  t.equal(vmRefusal(['x', 'host-b'], 'web1', cfg), undefined, 'any of its names');
  t.equal(vmRefusal(['intruder'], 'db', cfg), undefined, 'a VM not listed: anyone let in');
  t.equal(vmRefusal(['intruder'], 'web1', undefined), undefined, 'no TLS: no lists');
  t.equal(vmRefusal(['ops2', 'ops2.example'], 'web1', cfg), 'certificate of "ops2", "ops2.example" is not trusted with VM web1 (--tls-allow-vm web1=operator,host-b)');
  t.match(vmRefusal([], 'web1', cfg), /certificate of \(no name\) is not trusted/);
  const tls = { cert: Buffer.alloc(0), key: Buffer.alloc(0), ca: Buffer.alloc(0), allow: [], files: { cert: '', key: '', ca: '' } };
  t.same(vmAllowFromArgs({ 'tls-allow-vm': ['web1=operator, host-b', 'db=ops'] }, tls), { web1: ['operator', 'host-b'], db: ['ops'] });
  t.equal(vmAllowFromArgs({}, undefined), undefined, 'not given: no lists');
  t.throws(() => vmAllowFromArgs({ 'tls-allow-vm': ['web1=operator'] }, undefined), /--tls-allow-vm needs TLS/);
  for (const bad of ['web1', 'web1=', '=operator', 'web1=,']) {
    t.throws(() => vmAllowFromArgs({ 'tls-allow-vm': [bad] }, tls), new RegExp(`--tls-allow-vm ${bad}: give VM=NAME\\[,NAME\\.\\.\\.\\]`), `"${bad}" is refused, naming the form`);
  }
  t.throws(() => vmAllowFromArgs({ 'tls-allow-vm': ['web1=a', 'web1=b'] }, tls), /VM web1 is given twice/);
});

t.test('the certificate files', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-tls-unit-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  t.equal(loadTls({}), undefined, 'no TLS options: no TLS');
  const ca = makeCa(join(dir, 'ca'));
  const leaf = makeCert(ca, join(dir, 'leaf'), { cn: 'src', ips: ['10.0.0.1'] });
  const cfg = loadTls({ dir: leaf, allow: [' src ', ''] })!;
  t.same(cfg.allow, ['src'], 'the allow list, trimmed');
  t.equal(cfg.files.key, join(leaf, 'key.pem'));
  t.ok(loadTls({ cert: join(leaf, 'cert.pem'), key: join(leaf, 'key.pem'), ca: join(leaf, 'ca.pem') }), 'three files');
  t.throws(() => loadTls({ dir: leaf, cert: 'x' }), /either --tls-dir or --tls-cert/);
  t.throws(() => loadTls({ cert: 'x', ca: 'y' }), /--tls-key missing/);
  t.throws(() => loadTls({ allow: ['a'] }), /--tls-allow needs TLS/);
  writeFileSync(join(dir, 'junk.pem'), 'hello');
  t.throws(() => loadTls({ cert: join(dir, 'junk.pem'), key: join(leaf, 'key.pem'), ca: join(leaf, 'ca.pem') }), /--tls-cert \S+junk\.pem: not a PEM file/);
  chmodSync(join(leaf, 'key.pem'), 0o604);
  t.throws(() => loadTls({ dir: leaf }), /--tls-dir \(key\.pem\) \S+: open to every user \(mode 604\): chmod 600 it/);
});
