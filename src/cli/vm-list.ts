// `agent --vms FILE`: the VMs an agent starts, a JSON array of {"vm": ID, "argv": [QEMU argv]}.
import { readFileSync } from 'node:fs';
import { checkVmId } from '../store/keys.js';

export interface VmEntry {
  vm: string;
  argv: string[];
}

const FORM = 'a JSON array of {"vm": "ID", "argv": ["qemu-system-x86_64", ...]}';

/** The entries of `text` (read from `file`), each checked; an error names the entry and the form. */
export function parseVmList(text: string, file: string): VmEntry[] {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new Error(`--vms ${file}: not JSON (${(e as Error).message}); give ${FORM}`);
  }
  if (!Array.isArray(data) || data.length === 0) throw new Error(`--vms ${file}: give ${FORM}, with at least one VM`);
  const seen = new Set<string>();
  return data.map((e: unknown, i) => {
    const where = `--vms ${file}, entry ${i + 1}`;
    if (!e || typeof e !== 'object') throw new Error(`${where}: not an object; give ${FORM}`);
    const { vm, argv } = e as { vm?: unknown; argv?: unknown };
    if (typeof vm !== 'string') throw new Error(`${where}: "vm" must be a string (the VM id)`);
    try {
      checkVmId(vm);
    } catch (err) {
      throw new Error(`${where}: ${(err as Error).message}`);
    }
    if (seen.has(vm)) throw new Error(`${where}: VM "${vm}" is listed twice`);
    seen.add(vm);
    if (!Array.isArray(argv) || argv.length === 0 || !argv.every((a) => typeof a === 'string')) {
      throw new Error(`${where} (${vm}): "argv" must be a non-empty array of strings, the QEMU command line`);
    }
    return { vm, argv: argv as string[] };
  });
}

export function readVmList(file: string): VmEntry[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(`--vms ${file}: cannot read it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  return parseVmList(text, file);
}
