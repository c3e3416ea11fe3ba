// The migration stream between two agents with TLS is QEMU's own TLS: a real guest moves between
// two hosts (network namespaces), its memory self-check passes at the destination, and a capture
// of the migration's TCP stream (tcpdump) holds none of the guest's page magic ("MIGSAFEP" at the
// start of every page of the workload's region) — while the same capture and count, on a
// migration between two agents without TLS (loopback), finds it in thousands of pages. A
// destination agent with a certificate the CA did not sign gets no migration: it fails cleanly
// and the VM runs on at the source.
import t from 'tap';
import type { ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, openSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { waitFor } from '../helpers/wait.js';
import { ensureGuestBuilt, guestQemuArgs, parseConsole, waitForConsole } from '../helpers/guest.js';
import { AGENT_PORT, appendSerial, CLI_MAIN, createCluster, qemuPidsIn, type AgentStatus, type Cluster, type HostName } from '../helpers/hosts.js';
import { countPattern, fileBytes, startCapture } from '../helpers/capture.js';
import { makeCa, makeCert } from '../helpers/tls.js';
import { alive, logText } from '../helpers/cli.js';

ensureGuestBuilt();

const MAGIC = Buffer.from('MIGSAFEP'); // the first 8 bytes of every page of the guest workload's region
const REGION_MIB = 8; // 2048 such pages
const guestArgs = (serial: string) => appendSerial(guestQemuArgs({ workload: 'wset', memMiB: 128, workloadMiB: REGION_MIB, serialLog: serial }));

/** The CLI inside a host's namespace, exactly the given arguments (no --tls added). */
function cliIn(c: Cluster, h: HostName, args: string[]): Promise<{ code: number | string; stdout: string; stderr: string }> {
  const child = c.hosts.spawn(h, [process.execPath, CLI_MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MIGSAFE_STATE_DIR: join(c.dir, 'state') } });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), 300_000);
  return new Promise((res) => child.once('exit', (code, sig) => (clearTimeout(timer), res({ code: code ?? sig ?? -1, stdout, stderr: logText(stderr) }))));
}

const lastJson = (out: string) => JSON.parse(out.trim().split('\n').pop() || '{}') as { status?: string };
const statusOf = (file: string) => (existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as AgentStatus).vms[0] : undefined);

t.test('with TLS the migration stream is encrypted; in clear the same capture finds guest memory', async (t) => {
  const c = await createCluster({ t });
  const serial = join(c.dir, 'serial.log');
  // A destination whose certificate another CA signed (it trusts ours, so the refusal is the source's).
  const other = makeCa(join(c.dir, 'tls', 'other-ca'), 'some other CA');
  const wrong = makeCert(other, join(c.dir, 'tls', 'dst-wrong'), { cn: 'dst', ips: [c.hosts.dst.ip] });
  copyFileSync(join(c.tlsDirs.dst, 'ca.pem'), join(wrong, 'ca.pem'));
  const rightDst = c.tlsDirs.dst;
  c.tlsDirs.dst = wrong;
  const badDst = c.startAgent('dst', ['--no-gate']);
  c.tlsDirs.dst = rightDst;
  c.startAgent('src', ['--no-gate', '--interval', '700', '--vm', 'm1', '--', ...guestArgs(serial)]);
  await waitForConsole(serial, (p) => p.verifiedCount >= 3, 120_000);
  await waitFor('a committed FIC version', 60_000, () => ((c.status('src')?.vms[0]?.head ?? 0) > 0 ? true : undefined));
  const migPort = String(AGENT_PORT + 1);
  const migrate = () => c.cli('src', ['migrate', '--vm', 'm1', '--to', c.agents.dst!.addr, '--redis', c.redisUrl, '--bandwidth', '32']);

  // 1. The wrong certificate: refused before any QEMU is started or any byte of RAM is sent.
  const srcPid = c.status('src')!.vms[0]!.pid;
  const refused = await migrate();
  t.not(refused.code, 0, 'the migration to a destination with a wrong certificate fails');
  t.match(refused.stderr, /cannot reach the sidecar at [\d.]+:\d+: .*(unable to verify|issuer|self.signed)/i, `the operator is told why: ${refused.stderr.trim().split('\n').pop()}`);
  t.equal(c.status('src')!.vms[0]!.role, 'owner', 'the VM is still owned by the source');
  t.equal(c.status('src')!.vms[0]!.pid, srcPid, 'by the same QEMU');
  t.ok(alive(srcPid), 'which runs');
  t.same(qemuPidsIn(c.hosts.dst), [], 'no QEMU was started at the destination');
  const mark0 = readFileSync(serial, 'latin1').length;
  await waitForConsole(serial, (_p, text) => parseConsole(text.slice(mark0)).verifiedCount >= 1, 60_000);
  badDst.child.kill('SIGKILL');
  await badDst.exited;

  // 2. The right certificates: the migration runs, over QEMU's TLS.
  const goodDst = c.startAgent('dst', ['--no-gate']);
  await waitFor('the destination agent to listen', 30_000, () => (/listening on /.test(readFileSync(goodDst.log, 'utf8')) ? true : undefined));
  const tlsCap = await startCapture(c.hosts, c.hosts.dst, 'any', `tcp port ${migPort}`, join(c.dir, 'tls.pcap'));
  const r = await migrate();
  await tlsCap.stop();
  t.equal(r.code, 0, `migrate exits 0: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
  t.equal(lastJson(r.stdout).status, 'completed', 'the migration completed');
  const mark = readFileSync(serial, 'latin1').length;
  await waitFor('the destination to own the VM', 60_000, () => (c.status('dst')?.vms[0]?.role === 'owner' ? true : undefined));
  t.same(qemuPidsIn(c.hosts.src), [], 'no QEMU left at the source');
  const after = await waitForConsole(serial, (_p, text) => parseConsole(text.slice(mark)).verifiedCount >= 3, 120_000);
  t.same(after.errors.map((e) => e.raw), [], 'the guest finds its memory intact at the destination');
  t.match(readFileSync(c.agents.dst!.log, 'utf8'), /waits for m1 from src on tcp:[\d.]+:\d+ \(TLS\)/, 'the destination took the migration over TLS');
  const tlsBytes = fileBytes(tlsCap.file);
  const tlsRecords = countPattern(tlsCap.file, Buffer.from([0x17, 0x03, 0x03]));
  t.ok(tlsBytes > 4 << 20, `the capture holds the stream: ${(tlsBytes / 2 ** 20).toFixed(1)} MiB (${tlsCap.report().split('\n').slice(-3).join('; ')})`);
  t.ok(tlsRecords > 100, `TLS application-data records on the wire: ${tlsRecords}`);
  t.equal(countPattern(tlsCap.file, MAGIC), 0, 'no page of guest memory is readable on the wire');
  // Done with this VM: its agent takes its QEMU with it.
  c.agents.dst!.child.kill('SIGKILL');
  await c.agents.dst!.exited;

  // 3. The same guest, migrated between two agents without TLS (loopback of one host: the only
  // place agents without TLS talk), captured and counted the same way.
  const plainSerial = join(c.dir, 'serial-plain.log');
  const agent = (name: string, port: number, extra: string[]): { child: ChildProcess; status: string; log: string } => {
    const runDir = join('/dev/shm', `${c.hosts.id}-${name}`);
    mkdirSync(runDir, { recursive: true, mode: 0o700 });
    t.teardown(() => rmSync(runDir, { recursive: true, force: true }));
    const status = join(c.dir, `status-${name}.json`);
    const log = join(c.dir, `agent-${name}.log`);
    const child = c.hosts.spawn('src', [process.execPath, CLI_MAIN, 'agent', '--host', name, '--listen', `127.0.0.1:${port}`, '--redis', c.redisUrl, '--status-file', status, '--no-gate', ...extra], {
      stdio: ['ignore', openSync(log, 'a'), openSync(log, 'a')],
      env: { ...process.env, MIGSAFE_RUN_DIR: runDir, MIGSAFE_STATE_DIR: join(c.dir, 'state') },
    });
    return { child, status, log };
  };
  const pb = agent('pb', 7510, []);
  const pa = agent('pa', 7500, ['--interval', '700', '--vm', 'p1', '--', ...guestArgs(plainSerial)]);
  await waitForConsole(plainSerial, (p) => p.verifiedCount >= 3, 120_000);
  await waitFor('a committed FIC version of p1', 60_000, () => ((statusOf(pa.status)?.head ?? 0) > 0 ? true : undefined));
  const plainCap = await startCapture(c.hosts, c.hosts.src, 'lo', 'tcp port 7511', join(c.dir, 'plain.pcap'));
  const pr = await cliIn(c, 'src', ['migrate', '--vm', 'p1', '--from', '127.0.0.1:7500', '--to', '127.0.0.1:7510', '--redis', c.redisUrl, '--bandwidth', '32']);
  await plainCap.stop();
  t.equal(pr.code, 0, `the migration in clear exits 0: ${pr.stderr.trim().split('\n').slice(-3).join(' | ')}`);
  t.equal(lastJson(pr.stdout).status, 'completed', 'and completed');
  t.match(readFileSync(pb.log, 'utf8'), /waits for p1 from pa on tcp:127\.0\.0\.1:7511 \(in clear: no --tls-\*\)/, 'the destination says the stream is in clear');
  const plainBytes = fileBytes(plainCap.file);
  const seen = countPattern(plainCap.file, MAGIC);
  t.ok(plainBytes > 4 << 20, `the capture holds the stream: ${(plainBytes / 2 ** 20).toFixed(1)} MiB`);
  t.ok(seen >= 1024, `in clear the capture shows guest memory: ${seen} pages' magic (of ${(REGION_MIB << 20) / 4096})`);
  const markP = readFileSync(plainSerial, 'latin1').length;
  await waitFor('the plain destination to own p1', 60_000, () => (statusOf(pb.status)?.role === 'owner' ? true : undefined));
  const plainAfter = await waitForConsole(plainSerial, (_p, text) => parseConsole(text.slice(markP)).verifiedCount >= 2, 120_000);
  t.same(plainAfter.errors.map((e) => e.raw), [], 'that guest too finds its memory intact');
  for (const a of [pa, pb]) a.child.kill('SIGKILL');
});
