// The state and run directories: made 0700, and an existing one used only if it is a real
// directory of this user with mode 0700 — real directories with the wrong mode, owner or kind.
import t from 'tap';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensurePrivateDir } from '../../src/util/private-dir.js';

const root = mkdtempSync(join(tmpdir(), 'migsafe-dir-test-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));
const WHAT = '--run-dir (MIGSAFE_RUN_DIR)';

t.test('a missing directory is made 0700, parents included', async (t) => {
  const d = join(root, 'a', 'b', 'run');
  t.equal(ensurePrivateDir(d, WHAT), d);
  t.equal(statSync(d).mode & 0o777, 0o700);
  t.equal(ensurePrivateDir(d, WHAT), d, 'and is used again');
});

t.test('an existing one with another mode is refused, naming it and chmod 700', async (t) => {
  for (const mode of [0o755, 0o777, 0o750, 0o711]) {
    const d = join(root, `m${mode.toString(8)}`);
    mkdirSync(d);
    chmodSync(d, mode);
    t.throws(() => ensurePrivateDir(d, WHAT), new RegExp(`^${d} \\(--run-dir \\(MIGSAFE_RUN_DIR\\)\\) has mode ${mode.toString(8)}, so other users may enter it: \`chmod 700 ${d}\``));
  }
});

t.test("another user's directory is refused", { skip: process.getuid?.() !== 0 ? 'needs root to chown' : false }, async (t) => {
  const d = join(root, 'theirs');
  mkdirSync(d, { mode: 0o700 });
  chownSync(d, 65534, 65534);
  t.throws(() => ensurePrivateDir(d, WHAT), new RegExp(`^${d} .* belongs to uid 65534, not to this user \\(uid 0\\): .*remove it \\(\`rm -r ${d}\`\\)`));
});

t.test('a symbolic link (even to a private directory) and a file are refused', async (t) => {
  const real = join(root, 'real');
  mkdirSync(real, { mode: 0o700 });
  const link = join(root, 'link');
  symlinkSync(real, link);
  t.throws(() => ensurePrivateDir(link, WHAT), /is a symbolic link: migsafe uses only a real directory of its own/);
  const f = join(root, 'file');
  writeFileSync(f, '');
  t.throws(() => ensurePrivateDir(f, WHAT), /EEXIST|is not a directory/);
});
