// The QEMU series' own end-to-end checks (qemu-patches/tools/ft-test.py) against the patched
// binary: bitmap exact against a full compare; FIC exact while a live migration runs;
// device state save/load into a second QEMU with no abort; output commit releases exactly
// what each committed checkpoint explains; pre-copy under TCG loses no write (patch 0006); a
// post-copy whose source is killed completes from an image of its RAM and the same
// destination guest goes on (migsafe-postcopy-fill, patch 0007), and boots again after a
// system_reset (the BIOS/ROM/ACPI blocks the source never sent come back from QEMU's copy, 0008).
import t from 'tap';
import { spawn } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureGuestBuilt } from '../helpers/guest.js';
import { patchedQemu } from '../helpers/patched-qemu.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
ensureGuestBuilt();
const QEMU = patchedQemu();

for (const check of ['bitmap', 'migration', 'devices', 'net', 'precopy', 'fill']) {
  t.test(`ft-test.py ${check}`, async (t) => {
    const child = spawn('python3', [join(ROOT, 'qemu-patches', 'tools', 'ft-test.py'), '--qemu', QEMU, check], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    t.equal(code, 0, `${check} exits 0${code ? `:\n${out.slice(-2000)}` : ''}`);
    t.match(out, new RegExp(`${check}: PASS`), `${check} reports PASS`);
  });
}
