// A closed control plane: a real agent (a process, mutual TLS, certificates made here with
// openssl) running a real guest refuses every client that is not authenticated and authorised,
// refuses a destination that answers `prepare` with an exec: URI, and nothing happens to its VM.
// Without TLS an agent listens on loopback only.
import t from 'tap';
import { createServer as createNetServer } from 'node:net';
import * as tls from 'node:tls';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitFor } from '../helpers/wait.js';
import { ensureGuestBuilt, guestQemuArgs, waitForConsole } from '../helpers/guest.js';
import { testRedis } from '../helpers/redis.js';
import { alive, cliEnv, killQuietly, runCli, startCli, startOwnedCli } from '../helpers/cli.js';
import { makeCa, makeCert } from '../helpers/tls.js';

ensureGuestBuilt();

async function freePort(): Promise<number> {
  const s = createNetServer();
  await new Promise<void>((res) => s.listen(0, '127.0.0.1', () => res()));
  const port = (s.address() as { port: number }).port;
  await new Promise((res) => s.close(res));
  // The agent takes PORT and PORT+1 (migrations): keep clear of the top.
  return port < 65000 ? port : freePort();
}

interface Status {
  vms: { vm: string; role: string; pid: number; events: string[] }[];
}

t.test('an agent with TLS obeys only authenticated, authorised peers', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-tls-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const ca = makeCa(join(dir, 'ca'));
  const other = makeCa(join(dir, 'other-ca'), 'some other CA');
  const agentDir = makeCert(ca, join(dir, 'agent'), { cn: 'src', ips: ['127.0.0.1'] });
  const operator = makeCert(ca, join(dir, 'operator'), { cn: 'operator' });
  const intruder = makeCert(ca, join(dir, 'intruder'), { cn: 'intruder' });
  // Let in (--tls-allow), but not trusted with VM v1 (--tls-allow-vm v1=operator,dst).
  const ops2 = makeCert(ca, join(dir, 'ops2'), { cn: 'ops2' });
  const dst2Dir = makeCert(ca, join(dir, 'dst2'), { cn: 'dst2', ips: ['127.0.0.1'] });
  // Signed by another CA, but trusting ours (so that it is the agent that refuses it).
  const foreign = makeCert(other, join(dir, 'foreign'), { cn: 'operator' });
  writeFileSync(join(foreign, 'ca.pem'), readFileSync(ca.cert));
  // A fake destination with a good certificate that answers prepare with a shell command.
  const evilDir = makeCert(ca, join(dir, 'evil'), { cn: 'dst', ips: ['127.0.0.1'] });
  // A destination whose certificate another CA signed.
  const strangerDir = makeCert(other, join(dir, 'stranger'), { cn: 'dst', ips: ['127.0.0.1'] });

  const srv = await testRedis(t);
  const env = cliEnv(t);
  const port = await freePort();
  const addr = `127.0.0.1:${port}`;
  const serial = join(dir, 'serial.log');
  const statusFile = join(dir, 'status.json');
  const argv = guestQemuArgs({ workload: 'wset', serialLog: serial, workloadMiB: 4, memMiB: 128 });
  const agent = startOwnedCli(
    t,
    ['agent', '--host', 'src', '--listen', addr, '--redis', srv.url, '--status-file', statusFile, '--no-gate', '--interval', '500',
      '--tls-dir', agentDir, '--tls-allow', 'operator,dst,ops2,dst2', '--tls-allow-vm', 'v1=operator,dst', '--vm', 'v1', '--', ...argv],
    env,
  );
  let qemuPid = 0;
  const status = () => (existsSync(statusFile) ? (JSON.parse(readFileSync(statusFile, 'utf8')) as Status).vms[0] : undefined);
  await waitFor('the agent to run its VM', 60_000, () => (status()?.role === 'owner' ? true : undefined));
  qemuPid = agent.own(status()!.pid);
  await waitForConsole(serial, (p) => p.verifiedCount >= 1, 120_000);
  t.match(agent.err(), /listening on 127\.0\.0\.1:\d+ \(mutual TLS .*obeys only operator, dst, ops2, dst2\)/, 'the agent says it runs mutual TLS and whom it obeys');

  const migrate = (to: string, tlsArgs: string[]) =>
    runCli(['migrate', '--vm', 'v1', '--from', addr, '--to', to, ...tlsArgs], env, 60_000);
  const logFrom = agent.err().length;
  const newLog = () => agent.err().slice(logFrom);

  // 1. No TLS at all: the handshake fails.
  const plain = await migrate('127.0.0.1:1', []);
  t.not(plain.code, 0, 'a client without TLS gets nothing');
  await waitFor('the agent to log the plaintext client', 10_000, () => (/refused a control connection from 127\.0\.0\.1: TLS handshake failed: wrong version number/.test(newLog()) ? true : undefined));

  // 2. TLS, but no certificate.
  const bare = tls.connect({ host: '127.0.0.1', port, ca: readFileSync(ca.cert) });
  let bareGot = '';
  bare.setEncoding('utf8').on('data', (d: string) => (bareGot += d));
  bare.on('error', () => {});
  await new Promise((res) => bare.once('secureConnect', res));
  bare.write(JSON.stringify({ id: 1, op: 'migrate', vm: 'v1', to: '127.0.0.1:1' }) + '\n');
  await new Promise((res) => bare.once('close', res));
  t.same(bareGot.trim().split('\n').map((l) => JSON.parse(l) as unknown), [{ refused: 'no client certificate presented' }], 'a client without a certificate gets a refusal and no answer');
  t.match(newLog(), /refused a control connection from 127\.0\.0\.1: no client certificate presented/, 'the agent logs why');

  // 3. A certificate from another CA.
  const wrongCa = await migrate('127.0.0.1:1', ['--tls-dir', foreign]);
  t.not(wrongCa.code, 0, 'a client whose certificate another CA signed is refused');
  t.match(wrongCa.stderr, /connection to the other sidecar closed \(refused by the other side: certificate of "operator" not signed by the CA/, 'the client is told why');
  t.match(newLog(), /refused a control connection from 127\.0\.0\.1: certificate of "operator" not signed by the CA \S+ca\.pem \(UNABLE_TO_VERIFY_LEAF_SIGNATURE\)/, 'the agent logs why');

  // 4. Signed by the CA, but not in --tls-allow.
  const notAllowed = await migrate('127.0.0.1:1', ['--tls-dir', intruder]);
  t.not(notAllowed.code, 0, 'a certificate not in --tls-allow is refused');
  t.match(notAllowed.stderr, /refused by the other side: certificate of "intruder" is not in --tls-allow/, 'the client is told why');
  t.match(newLog(), /refused a control connection from 127\.0\.0\.1: certificate of "intruder" is not in --tls-allow/, 'the agent logs why');

  // 4b. Let in, but not trusted with this VM.
  const notForVm = await migrate('127.0.0.1:1', ['--tls-dir', ops2]);
  t.not(notForVm.code, 0, 'a peer not in --tls-allow-vm for the VM is refused');
  t.match(notForVm.stderr, /certificate of "ops2" is not trusted with VM v1 \(--tls-allow-vm v1=operator,dst\)/, 'the client is told why');
  t.match(newLog(), /refused a request about VM v1 from 127\.0\.0\.1: certificate of "ops2" is not trusted with VM v1/, 'the agent logs why');

  // 5. The operator, authorised, asks for a migration to a destination another CA vouches for.
  const stranger = tls.createServer({ cert: readFileSync(join(strangerDir, 'cert.pem')), key: readFileSync(join(strangerDir, 'key.pem')) }, (s) => s.on('error', () => {}));
  stranger.on('tlsClientError', () => {});
  await new Promise<void>((res) => stranger.listen(0, '127.0.0.1', () => res()));
  t.teardown(() => stranger.close());
  const toStranger = await migrate(`127.0.0.1:${(stranger.address() as { port: number }).port}`, ['--tls-dir', operator]);
  t.not(toStranger.code, 0, 'the agent will not migrate to a destination whose certificate it cannot verify');
  t.match(toStranger.stderr, /cannot reach the sidecar at 127\.0\.0\.1:\d+: .*(self.signed|unable to verify|issuer)/i, `the operator is told: ${toStranger.stderr.trim()}`);

  // 6. A destination with a good certificate answers prepare with an exec: URI.
  const pwned = join(dir, 'pwned');
  let prepared = 0;
  const evil = tls.createServer(
    { cert: readFileSync(join(evilDir, 'cert.pem')), key: readFileSync(join(evilDir, 'key.pem')), ca: readFileSync(ca.cert), requestCert: true, rejectUnauthorized: true },
    (s) => {
      s.on('error', () => {});
      let buf = '';
      s.setEncoding('utf8').on('data', (d: string) => {
        buf += d;
        for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
          const m = JSON.parse(buf.slice(0, nl)) as { id?: number; op?: string };
          buf = buf.slice(nl + 1);
          if (m.op === 'prepare') {
            prepared++;
            s.write(JSON.stringify({ id: m.id, ok: true, result: { uri: `exec:touch ${pwned}`, host: 'dst', port: 7401 } }) + '\n');
          }
        }
      });
    },
  );
  await new Promise<void>((res) => evil.listen(0, '127.0.0.1', () => res()));
  t.teardown(() => evil.close());
  const toEvil = await migrate(`127.0.0.1:${(evil.address() as { port: number }).port}`, ['--tls-dir', operator]);
  t.equal(prepared, 1, 'the authorised operator reached the agent, which asked the fake destination to prepare');
  t.not(toEvil.code, 0, 'the migration is refused');
  t.match(toEvil.stderr, /refusing migration URI "exec:touch [^"]*": only tcp:/, `the operator is told: ${toEvil.stderr.trim().split('\n').pop()}`);
  t.match(newLog(), /migration to 127\.0\.0\.1:\d+ refused: .*refusing migration URI "exec:/, 'the agent logs it');
  t.notOk(existsSync(pwned), 'QEMU ran no command');

  // 7. A destination the CA signed and --tls-allow lets in, but not trusted with VM v1: never asked to prepare.
  let prepared2 = 0;
  const dst2 = tls.createServer(
    { cert: readFileSync(join(dst2Dir, 'cert.pem')), key: readFileSync(join(dst2Dir, 'key.pem')), ca: readFileSync(ca.cert), requestCert: true, rejectUnauthorized: true },
    (s) => {
      s.on('error', () => {});
      s.setEncoding('utf8').on('data', (d: string) => (prepared2 += (d.match(/"op":"prepare"/g) ?? []).length));
    },
  );
  await new Promise<void>((res) => dst2.listen(0, '127.0.0.1', () => res()));
  t.teardown(() => dst2.close());
  const toDst2 = await migrate(`127.0.0.1:${(dst2.address() as { port: number }).port}`, ['--tls-dir', operator]);
  t.not(toDst2.code, 0, 'the agent will not migrate the VM to a destination not trusted with it');
  t.match(toDst2.stderr, /certificate of "dst2".* is not trusted with VM v1/, `the operator is told: ${toDst2.stderr.trim().split('\n').pop()}`);
  t.equal(prepared2, 0, 'that destination was never asked to prepare');

  // Nothing happened to the VM: the same QEMU runs it, here, and the guest goes on.
  const st = status()!;
  t.equal(st.role, 'owner', 'the VM is still owned here');
  t.equal(st.pid, qemuPid, 'by the same QEMU');
  t.ok(alive(qemuPid), 'which is alive');
  t.notOk(st.events.some((e) => /migrating to/.test(e)), 'no migration was started');
  const mark = readFileSync(serial, 'latin1').length;
  await waitForConsole(serial, (_p, text) => /MIGSAFE/.test(text.slice(mark)), 60_000);
  t.ok(alive(agent.child.pid!), 'the agent runs on');
});

t.test('without TLS an agent listens on loopback only', async (t) => {
  const env = cliEnv(t);
  for (const listen of ['0.0.0.0:7400', '10.231.0.1:7400']) {
    const r = await runCli(['agent', '--host', 'a', '--listen', listen, '--redis', 'redis://127.0.0.1:1'], env, 30_000);
    t.equal(r.code, 2, `--listen ${listen} without TLS: refused`);
    t.match(r.stderr, /--listen .* is not a loopback address and TLS is off: give --tls-dir DIR .* or --tls-cert FILE --tls-key FILE --tls-ca FILE/, 'the error names the --tls options');
  }
  const m = await runCli(['migrate', '--vm', 'v1', '--from', '10.231.0.1:7400', '--to', '10.231.0.2:7400'], env, 30_000);
  t.not(m.code, 0, 'migrate without TLS will not talk to a non-loopback agent');
  t.match(m.stderr, /10\.231\.0\.1:7400 is not a loopback address and TLS is off: give --tls-dir/, 'and says so');

  const srv = await testRedis(t);
  const port = await freePort();
  const a = startCli(['agent', '--host', 'a', '--listen', `127.0.0.1:${port}`, '--redis', srv.url, '--no-gate'], env);
  t.teardown(() => killQuietly(a.child.pid));
  await waitFor('the agent to listen', 30_000, () => (/listening on/.test(a.err()) ? true : undefined));
  t.match(a.err(), /no TLS: the control channel is unauthenticated, so it listens on loopback only/, 'a loopback agent without TLS says what that means');
});

t.test('bad TLS options are named', async (t) => {
  const env = cliEnv(t);
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-tls-opts-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const run = (extra: string[]) => runCli(['migrate', '--vm', 'v1', '--from', '127.0.0.1:1', '--to', '127.0.0.1:2', ...extra], env, 30_000);
  let r = await run(['--tls-cert', join(dir, 'c.pem')]);
  t.match(r.stderr, /--tls-key, --tls-ca missing/, 'a lone --tls-cert');
  r = await run(['--tls-dir', dir]);
  t.match(r.stderr, /--tls-dir \(cert\.pem\) .*cert\.pem: ENOENT/, 'an empty --tls-dir');
  r = await run(['--tls-allow', 'x']);
  t.match(r.stderr, /--tls-allow needs TLS/, '--tls-allow alone');
  const ca = makeCa(join(dir, 'ca'));
  const leaf = makeCert(ca, join(dir, 'leaf'), { cn: 'x' });
  const { chmodSync } = await import('node:fs');
  chmodSync(join(leaf, 'key.pem'), 0o644);
  r = await run(['--tls-dir', leaf]);
  t.match(r.stderr, /key\.pem: open to every user \(mode 644\): chmod 600 it/, 'a world-readable key');
});
