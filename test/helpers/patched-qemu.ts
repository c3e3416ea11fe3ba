// The patched QEMU built by qemu-patches/build.sh (scripts/setup.sh runs it).
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

export function patchedQemu(): string {
  const prefix = process.env.MIGSAFE_QEMU_PREFIX ?? join(ROOT, '.cache', 'qemu');
  const bin = join(prefix, 'bin', 'qemu-system-x86_64');
  if (!existsSync(bin)) {
    throw new Error(`the patched QEMU is not built (${bin} is missing): run \`bash qemu-patches/build.sh --debian\``);
  }
  return bin;
}
