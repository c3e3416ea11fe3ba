// libvirt as the one that runs QEMU (`attach --domain`, recovery of a libvirt domain): virsh for
// the domain's state and XML, the domain XML for what migsafe needs (docs/libvirt.md).
//
// QMP comes from a monitor of our own in the domain's <qemu:commandline> (`-qmp unix:PATH,...`),
// not from `virsh qemu-monitor-command`: the checkpoint engine holds one monitor for its whole
// life and times its stage-2 `stop`…`cont` pause; through virsh each command would be a new
// process and a libvirt job (which waits behind any other job on the domain, unbounded), and
// there would be no QMP events. libvirt still sees our stop/cont as STOP/RESUME events.
import { execFile } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { QmpClient } from './qmp.js';

export const DEFAULT_LIBVIRT_URI = 'qemu:///system';
export const QEMU_NS = 'http://libvirt.org/schemas/domain/qemu/1.0';

/** What recovery adds to the recorded XML, and what attach strips from a recovered domain's. */
export const INCOMING_ARGS = ['-machine', 'suppress-vmdesc=on', '-global', 'migration.send-configuration=off', '-incoming', 'defer'];

export class Virsh {
  constructor(readonly uri: string) {}

  run(args: string[], timeoutMs = 60_000): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile('virsh', ['-q', '-c', this.uri, ...args], { timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
        if (!err) return resolve(stdout);
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
          return reject(new Error('virsh not found: install libvirt-clients (apt-get install libvirt-clients)'));
        }
        const msg = (stderr || err.message).trim().replace(/^error: /gm, '').replace(/\n+/g, '; ');
        reject(new Error(`virsh -c ${this.uri} ${args[0]}: ${msg}`));
      });
    });
  }

  /** The domain's state ('running', 'paused', 'shut off', ...), or null when libvirt has no such domain. */
  async state(name: string): Promise<string | null> {
    try {
      return (await this.run(['domstate', name])).trim();
    } catch (e) {
      const m = (e as Error).message;
      if (/failed to get domain|Domain not found/i.test(m)) return null;
      if (/failed to connect/i.test(m)) {
        throw new Error(`${m} — is libvirtd (or virtqemud) running? Check with: virsh -c ${this.uri} version`);
      }
      throw e;
    }
  }

  /** The state, refusing a domain libvirt does not know with the command that lists them. */
  async existingState(name: string): Promise<string> {
    const s = await this.state(name);
    if (s === null) {
      throw new Error(`libvirt domain "${name}" not found at ${this.uri}: \`virsh -c ${this.uri} list --all\` lists the domains (or give --libvirt-uri)`);
    }
    return s;
  }

  dumpXml(name: string, flags: string[] = []): Promise<string> {
    return this.run(['dumpxml', ...flags, name]);
  }

  /** Starts a transient domain from `xml`; over a defined, inactive domain of that name, its persistent XML stays. */
  async create(xml: string, paused: boolean): Promise<void> {
    const dir = mkdtempSync(join(tmpdir(), 'migsafe-libvirt-'));
    try {
      writeFileSync(join(dir, 'domain.xml'), xml, { mode: 0o600 });
      await this.run(['create', join(dir, 'domain.xml'), ...(paused ? ['--paused'] : [])], 120_000);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  async resume(name: string): Promise<void> {
    await this.run(['resume', name]);
  }

  async destroy(name: string): Promise<void> {
    await this.run(['destroy', name]);
  }

  /** QEMU's pid from libvirt's pid file (qemu:///system only), or undefined. */
  pid(name: string): number | undefined {
    if (this.uri !== 'qemu:///system') return undefined;
    try {
      const n = Number(readFileSync(`/run/libvirt/qemu/${name}.pid`, 'utf8').trim());
      return Number.isSafeInteger(n) && n > 0 ? n : undefined;
    } catch {
      return undefined;
    }
  }
}

// ------------------------------------------------------------------ the domain XML
// virsh's own output is what is read here (canonical: one element per line, the `qemu:` prefix).

function unescapeXml(s: string): string {
  return s.replace(/&(apos|quot|lt|gt|amp);/g, (_, e: string) => ({ apos: "'", quot: '"', lt: '<', gt: '>', amp: '&' })[e]!);
}

function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');
}

/** What to add unless guest RAM is a shared file (<memoryBacking>); undefined when it is. */
export function sharedFileMemoryProblem(xml: string): string | undefined {
  const mb = /<memoryBacking>([\s\S]*?)<\/memoryBacking>/.exec(xml)?.[1] ?? '';
  if (/<source\s+type=['"]file['"]/.test(mb) && /<access\s+mode=['"]shared['"]/.test(mb)) return undefined;
  return (
    'it has no shared file memory backing, so its guest RAM cannot be read: add ' +
    "<memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>"
  );
}

/** What to add for migsafe's own QMP monitor (a `-qmp unix:` in <qemu:commandline>). */
export function qmpProblem(name: string): string {
  return (
    "it has no QMP monitor for migsafe: add <qemu:commandline><qemu:arg value='-qmp'/>" +
    `<qemu:arg value='unix:/var/lib/libvirt/qemu/${name}.migsafe.qmp,server=on,wait=off'/></qemu:commandline> ` +
    "(and xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0' on its <domain> element)"
  );
}

/** The values of every <qemu:arg> of the domain's <qemu:commandline>, in order. */
export function qemuCommandline(xml: string): string[] {
  const out: string[] = [];
  for (const block of xml.matchAll(/<qemu:commandline>([\s\S]*?)<\/qemu:commandline>/g)) {
    for (const m of block[1]!.matchAll(/<qemu:arg\s+value=(?:'([^']*)'|"([^"]*)")\s*\/>/g)) out.push(unescapeXml(m[1] ?? m[2]!));
  }
  return out;
}

/** The XML with its <qemu:commandline> replaced by `args` (none: removed). */
export function withQemuCommandline(xml: string, args: readonly string[]): string {
  let out = xml.replace(/[ \t]*<qemu:commandline>[\s\S]*?<\/qemu:commandline>\n?/g, '');
  if (!args.length) return out;
  if (!out.includes(`xmlns:qemu=`)) out = out.replace(/<domain\b/, `<domain xmlns:qemu='${QEMU_NS}'`);
  const block = `  <qemu:commandline>\n${args.map((a) => `    <qemu:arg value='${escapeXml(a)}'/>\n`).join('')}  </qemu:commandline>\n`;
  return out.replace(/<\/domain>\s*$/, `${block}</domain>\n`);
}

/** Removes what a migsafe recovery added (INCOMING_ARGS, as one run), so the record is the user's domain. */
export function withoutIncomingArgs(args: readonly string[]): string[] {
  const n = INCOMING_ARGS.length;
  for (let i = 0; i + n <= args.length; i++) {
    if (INCOMING_ARGS.every((a, j) => args[i + j] === a)) return [...args.slice(0, i), ...args.slice(i + n)];
  }
  return [...args];
}

/** The path of the `-qmp unix:PATH[,...]` monitor in the commandline, or undefined. */
export function qmpSocketOf(args: readonly string[]): string | undefined {
  for (let i = 0; i < args.length - 1; i++) {
    if (args[i] === '-qmp' && args[i + 1]!.startsWith('unix:')) return args[i + 1]!.slice(5).split(',')[0];
  }
  return undefined;
}

/** The patched QEMU's migsafe-ft socket (`-object migsafe-ft,...,path=P`) in the commandline, or undefined. */
export function ftSocketOf(args: readonly string[]): string | undefined {
  for (let i = 0; i < args.length - 1; i++) {
    if (args[i] === '-object' && /^migsafe-ft,/.test(args[i + 1]!)) return /(?:^|,)path=([^,]+)/.exec(args[i + 1]!)?.[1];
  }
  return undefined;
}

/** The XML's <emulator> replaced (recover --qemu-binary). */
export function withEmulator(xml: string, binary: string): string {
  return xml.replace(/<emulator>[^<]*<\/emulator>/, `<emulator>${escapeXml(binary)}</emulator>`);
}

/** The guest RAM file QEMU mapped: the one shared memory backend's mem-path (QMP query-memdev, qom-get). */
export async function sharedRamFile(qmp: QmpClient, what: string): Promise<{ path: string; bytes: number }> {
  const devs = await qmp.execute<{ id?: string; share: boolean; size: number }[]>('query-memdev');
  const shared = devs.filter((d) => d.share && d.id);
  if (shared.length !== 1) {
    throw new Error(
      `${what}: ${shared.length} shared memory backends (${devs.map((d) => d.id).join(', ') || 'none'}); ` +
        'migsafe needs guest RAM in exactly one shared file: no NUMA cells, <memoryBacking><source type=\'file\'/><access mode=\'shared\'/>',
    );
  }
  const path = await qmp.execute<string>('qom-get', { path: `/objects/${shared[0]!.id}`, property: 'mem-path' });
  return { path, bytes: shared[0]!.size };
}
