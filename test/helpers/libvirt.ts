// A real libvirtd (and the virtlogd it logs QEMU's output through) from Debian's packages,
// started by the test as its own child processes — there is no systemd here to start them —
// and stopped at teardown, after the domains the test made are destroyed.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { guestAppend, guestArtifacts, type GuestWorkload } from './guest.js';

export const LIBVIRT_URI = 'qemu:///system';

export function virsh(args: string[], timeoutMs = 60_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('virsh', ['-q', '-c', LIBVIRT_URI, ...args], { timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
      resolve({ code, stdout, stderr: stderr || (err && code === -1 ? err.message : '') });
    });
  });
}

/** virsh, throwing with its stderr unless it succeeds. */
export async function virshOk(args: string[], timeoutMs?: number): Promise<string> {
  const r = await virsh(args, timeoutMs);
  if (r.code !== 0) throw new Error(`virsh ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

interface Daemon {
  name: string;
  child: ChildProcess;
  log: () => string;
}

function startDaemon(name: string, args: string[]): Daemon {
  const child = spawn(name, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (log += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (log += d));
  child.once('error', (e) => (log += `\nspawn ${name}: ${e.message}\n`));
  return { name, child, log: () => log };
}

async function stopDaemon(d: Daemon): Promise<void> {
  if (d.child.exitCode !== null || d.child.signalCode !== null) return;
  const gone = new Promise<void>((r) => d.child.once('exit', () => r()));
  d.child.kill('SIGTERM');
  const t = setTimeout(() => d.child.kill('SIGKILL'), 10_000);
  await gone;
  clearTimeout(t);
}

/**
 * Starts virtlogd and libvirtd (foreground, pid files of their own) and waits until
 * `virsh -c qemu:///system version` answers. Refuses, naming why, if a libvirtd answers
 * already (it is not ours to use or stop) or if ours does not come up.
 */
export async function startLibvirt(t: Test): Promise<void> {
  const pre = await virsh(['version'], 10_000);
  if (pre.code === 0) {
    throw new Error(
      `a libvirtd already answers at ${LIBVIRT_URI} (not started by this test): stop it first; ` +
        `\`virsh -c ${LIBVIRT_URI} list --all\` shows its domains`,
    );
  }
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-libvirtd-'));
  const logd = startDaemon('virtlogd', ['-p', join(dir, 'virtlogd.pid')]);
  // libvirtd connects to virtlogd's socket when it starts a domain; give it a moment to bind.
  await waitSocket('/run/libvirt/virtlogd-sock', logd, 10_000);
  const lvd = startDaemon('libvirtd', ['-p', join(dir, 'libvirtd.pid')]);
  t.teardown(async () => {
    await stopDaemon(lvd);
    await stopDaemon(logd);
    rmSync(dir, { recursive: true, force: true });
  });
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (lvd.child.exitCode !== null || lvd.child.signalCode !== null) {
      throw new Error(`libvirtd exited (${lvd.child.exitCode ?? lvd.child.signalCode}) at start; its output:\n${lvd.log()}`);
    }
    const r = await virsh(['version'], 10_000);
    if (r.code === 0) return;
    if (Date.now() > deadline) {
      throw new Error(`libvirtd started but \`virsh -c ${LIBVIRT_URI} version\` does not answer after 30 s: ${r.stderr.trim()}\nlibvirtd:\n${lvd.log()}`);
    }
    await new Promise((res) => setTimeout(res, 200));
  }
}

async function waitSocket(path: string, d: Daemon, timeoutMs: number): Promise<void> {
  const { existsSync } = await import('node:fs');
  const deadline = Date.now() + timeoutMs;
  while (!existsSync(path)) {
    if (d.child.exitCode !== null || d.child.signalCode !== null) {
      throw new Error(`${d.name} exited (${d.child.exitCode ?? d.child.signalCode}) at start; its output:\n${d.log()}`);
    }
    if (Date.now() > deadline) throw new Error(`${d.name} did not create ${path} in ${timeoutMs} ms; its output:\n${d.log()}`);
    await new Promise((res) => setTimeout(res, 100));
  }
}

export interface TestDomainOptions {
  name: string;
  workload: GuestWorkload;
  workloadMiB?: number;
  memMiB?: number;
  serialLog: string;
  /** `-qmp unix:PATH,server=on,wait=off` in <qemu:commandline>; none when undefined. */
  qmpSocket?: string;
  /** <memoryBacking> with a shared file (default true). */
  sharedFile?: boolean;
  /** Created paused (virsh create --paused): the guest never runs. */
  paused?: boolean;
}

/** The domain XML of the test guest: direct kernel boot, file serial, TCG, as docs/libvirt.md says. */
export function testDomainXml(o: TestDomainOptions): string {
  const g = guestArtifacts();
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/'/g, '&apos;');
  return `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>${o.name}</name>
  <memory unit='MiB'>${o.memMiB ?? 256}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${esc(g.kernel)}</kernel>
    <initrd>${esc(g.initrd)}</initrd>
    <cmdline>${esc(guestAppend({ workload: o.workload, workloadMiB: o.workloadMiB }))}</cmdline>
  </os>
${o.sharedFile === false ? '' : "  <memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>\n"}  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'><source path='${esc(o.serialLog)}' append='on'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
  <seclabel type='static' model='dac' relabel='no'><label>root:root</label></seclabel>
${
  o.qmpSocket
    ? `  <qemu:commandline>\n    <qemu:arg value='-qmp'/>\n    <qemu:arg value='unix:${esc(o.qmpSocket)},server=on,wait=off'/>\n  </qemu:commandline>\n`
    : ''
}</domain>
`;
}

/** Creates a transient domain; at teardown it is destroyed (and its QEMU killed if libvirt cannot). */
export async function createTestDomain(t: Test, o: TestDomainOptions): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-domain-'));
  const file = join(dir, `${o.name}.xml`);
  const { writeFileSync } = await import('node:fs');
  writeFileSync(file, testDomainXml(o));
  t.teardown(async () => {
    const pid = domainPid(o.name);
    await virsh(['destroy', o.name], 30_000);
    if (pid) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    rmSync(dir, { recursive: true, force: true });
  });
  await virshOk(['create', file, ...(o.paused ? ['--paused'] : [])], 120_000);
}

/** The domain's QEMU pid (libvirt's pid file), or undefined. */
export function domainPid(name: string): number | undefined {
  try {
    const n = Number(readFileSync(`/run/libvirt/qemu/${name}.pid`, 'utf8').trim());
    return n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

export async function domState(name: string): Promise<string | null> {
  const r = await virsh(['domstate', name], 30_000);
  return r.code === 0 ? r.stdout.trim() : null;
}

/** Defines a persistent domain without starting it; undefined at teardown. */
export async function defineTestDomain(t: Test, o: TestDomainOptions): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-domain-'));
  const file = join(dir, `${o.name}.xml`);
  const { writeFileSync } = await import('node:fs');
  writeFileSync(file, testDomainXml(o));
  t.teardown(async () => {
    await virsh(['undefine', o.name], 30_000);
    rmSync(dir, { recursive: true, force: true });
  });
  await virshOk(['define', file], 120_000);
}
