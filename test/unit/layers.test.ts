// The folders of src/ are the layers (docs/design.md): each imports only the ones below it.
// This walks every import of src/ and fails on one against that order, on a raw addon import
// outside src/kernel, on src/ importing bench/ or test/, and on a file over 400 lines.
import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const SRC = join(ROOT, 'src');

/** Rank of each folder of src/: a file may import its own folder or folders of lower rank. */
const RANK: Record<string, number> = {
  util: 0,
  kernel: 1,
  qemu: 2,
  store: 2,
  checkpoint: 3,
  ha: 4,
  recovery: 4,
  migration: 5,
  cli: 6,
  '.': 7, // src/index.ts, the package's public face
};
const MAX_LINES = 400;

interface SourceFile {
  /** Path relative to the repository root, '/'-separated. */
  path: string;
  text: string;
}

function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? walk(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

/** Every module specifier a file names: static imports and re-exports, import() in code or types. */
export function specifiers(text: string): string[] {
  const out: string[] = [];
  const re = /(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)['"]([^'"]+)['"]/gm;
  for (const m of text.matchAll(re)) out.push(m[1]!);
  return out;
}

function layerOf(path: string): string {
  const parts = path.split('/');
  return parts.length > 2 ? parts[1]! : '.';
}

/** Rule violations of a set of files under src/, one line each. */
export function violations(files: SourceFile[]): string[] {
  const bad: string[] = [];
  for (const f of files) {
    const from = layerOf(f.path);
    if (!(from in RANK)) bad.push(`${f.path}: folder src/${from} has no place in the layer order`);
    const lines = f.text.split('\n').length;
    if (lines > MAX_LINES) bad.push(`${f.path}: ${lines} lines (at most ${MAX_LINES})`);
    if (f.text.includes('migsafe.node') && f.path !== 'src/kernel/native.ts') {
      bad.push(`${f.path}: loads the addon itself (only src/kernel/native.ts does)`);
    }
    for (const spec of specifiers(f.text)) {
      if (!spec.startsWith('.')) continue; // a package or node: builtin
      const target = relative(ROOT, resolve(ROOT, dirname(f.path), spec)).split(sep).join('/');
      if (!target.startsWith('src/')) {
        bad.push(`${f.path}: imports ${spec}, outside src/ (the product must not depend on bench/ or test/)`);
        continue;
      }
      const to = layerOf(target);
      if (target.replace(/\.js$/, '') === 'src/kernel/native' && from !== 'kernel') {
        bad.push(`${f.path}: imports the raw addon (${spec}); use src/kernel's checked wrappers`);
      }
      if (to === from) continue;
      if (!(to in RANK) || RANK[to]! >= RANK[from]!) {
        bad.push(`${f.path}: src/${from} imports src/${to} (${spec}), against the layer order`);
      }
    }
  }
  return bad;
}

t.test('the rules catch what they should', async (t) => {
  const f = (path: string, text: string): SourceFile => ({ path, text });
  t.same(violations([f('src/store/a.ts', "import { x } from '../kernel/page-delta.js';")]), []);
  t.match(violations([f('src/store/a.ts', "import type { D } from '../qemu/dirty-source.js';")]), [/src\/store imports src\/qemu/]);
  t.match(violations([f('src/kernel/a.ts', "export { y } from '../checkpoint/engine.js';")]), [/against the layer order/]);
  t.match(violations([f('src/ha/a.ts', "const m = await import('../migration/agent.js');")]), [/src\/ha imports src\/migration/]);
  t.match(violations([f('src/ha/a.ts', "type R = import('../cli/context.js').X;")]), [/src\/ha imports src\/cli/]);
  t.match(violations([f('src/cli/a.ts', "import { n } from '../kernel/native.js';")]), [/raw addon/]);
  t.match(violations([f('src/cli/a.ts', "import { b } from '../../bench/diff.js';")]), [/outside src/]);
  t.match(violations([f('src/qemu/a.ts', 'x\n'.repeat(MAX_LINES + 1))]), [/lines \(at most/]);
  t.match(violations([f('src/extra/a.ts', '')]), [/no place in the layer order/]);
});

t.test('src/ follows the layer order', async (t) => {
  const files = walk(SRC).map((p) => ({ path: relative(ROOT, p).split(sep).join('/'), text: readFileSync(p, 'utf8') }));
  t.ok(files.length > 20, `read ${files.length} files of src/`);
  t.same(violations(files), [], 'no import against the layers, no raw addon import outside src/kernel, no file over the limit');
});
