// The addon's libFuzzer harness (addon/fuzz/fuzz_kernel.cc: the XBZRLE decoder, the batch
// parser and the encoders on arbitrary input, under ASan + UBSan) runs in every `npm test`,
// bounded in time: a crash, a sanitizer report or a broken invariant fails this test, and the
// input that did it is left as build-fuzz/crash-*. MIGSAFE_FUZZ_SECONDS changes the bound (default 30).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const SECONDS = Number(process.env.MIGSAFE_FUZZ_SECONDS ?? 30);

t.test(`libFuzzer on the kernel's untrusted-input paths for ${SECONDS} s finds no crash`, async (t) => {
  t.ok(Number.isInteger(SECONDS) && SECONDS > 0 && SECONDS <= 60, `MIGSAFE_FUZZ_SECONDS=${SECONDS} is a whole number in 1..60`);
  const r = spawnSync('sh', [join(ROOT, 'scripts', 'fuzz.sh'), '--max-time', String(SECONDS)], { cwd: ROOT, encoding: 'utf8', timeout: (SECONDS + 240) * 1000 });
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  const tail = out.trim().split('\n').slice(-12).join('\n');
  t.equal(r.status, 0, `scripts/fuzz.sh exits 0${r.status === 0 ? '' : `:\n${tail}`}`);
  t.notMatch(out, /ERROR: (AddressSanitizer|libFuzzer)|runtime error:|invariant broken/, 'no sanitizer report, libFuzzer error or broken invariant');
  const runs = Number(/stat::number_of_executed_units:\s*(\d+)/.exec(out)?.[1] ?? 0);
  t.ok(runs > 1000, `libFuzzer ran ${runs} inputs`);
});
