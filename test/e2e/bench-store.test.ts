// `npm run bench:store`: its command line, and one tiny run of the real entry point against the
// servers it starts — both stores measured at each VM count, every image read back verified,
// redis-benchmark run on the same servers, and the large VM's frames on every primary.
// Speed is not asserted (the benchmark reports it as ratios).
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseStoreArgs, type StoreBenchResult } from '../../bench/store.js';
import { corpusDir } from '../unit/corpus.js';

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bench', 'store-main.js');

t.test('arguments: defaults, and bad ones named with the fix', async (t) => {
  t.match(parseStoreArgs([]), { vms: [1, 4, 16], ramMiB: 32, reps: 3, largeMiB: 4096, codec: 'lz4', json: false });
  t.match(parseStoreArgs(['--vms', '2,8', '--large-mib', '0', '--json']), { vms: [2, 8], largeMiB: 0, json: true });
  t.throws(() => parseStoreArgs(['--vms', '0,4']), /--vms 0,4: give whole numbers from 1 to 256/);
  t.throws(() => parseStoreArgs(['--reps', 'x']), /--reps x: give a whole number of at least 1/);
  t.throws(() => parseStoreArgs(['--ram-mib']), /--ram-mib needs a value/);
  t.throws(() => parseStoreArgs(['--vm', '3']), /unknown argument --vm[\s\S]*usage: npm run bench:store/);
  t.throws(() => parseStoreArgs(['--codec', 'zip']), /zip/);
});

t.test('a run of one repetition, 1 and 2 VMs, a 128 MiB large VM', async (t) => {
  const corpus = corpusDir();
  if (!corpus) throw new Error('no corpus: set MIGSAFE_CORPUS to the directory of the .pairs files');
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-benchstore-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const child = spawn(process.execPath, [MAIN, '--vms', '1,2', '--ram-mib', '8', '--reps', '1', '--large-mib', '128', '--json', '--dir', dir], {
    env: { ...process.env, MIGSAFE_CORPUS: corpus },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (err += s));
  const code = await new Promise((r) => child.once('exit', r));
  t.equal(code, 0, `exit 0 (${err.trim().split('\n').pop()})`);
  const r = JSON.parse(out) as StoreBenchResult;
  t.equal(r.primaries, 3, 'a 3-primary cluster');
  t.same(r.measures.map((m) => `${m.vms}:${m.topology}`).sort(), ['1:cluster', '1:single', '2:cluster', '2:single'], 'both stores at each VM count');
  for (const m of r.measures) {
    t.equal(m.pages, m.vms * r.dirtyPagesPerVm, `${m.vms} × ${m.topology}: every VM's pages committed`);
    t.ok(m.commitMBpsMedian > 0 && m.recoverMBpsMedian > 0, `${m.vms} × ${m.topology}: ${m.commitMBpsMedian.toFixed(0)} MB/s in, ${m.recoverMBpsMedian.toFixed(0)} MB/s out`);
  }
  t.same(r.redisBenchmark.map((b) => b.topology), ['single', 'cluster'], 'redis-benchmark on both');
  t.ok(r.redisBenchmark.every((b) => b.requestsPerSec > 0 && b.dataBytes > 0), 'with a rate');
  t.ok(r.large?.verified, 'the large VM read back equal');
  t.equal(r.large!.perPrimary.length, 3);
  t.ok(r.large!.perPrimary.every((p) => p.bytes > 0), `its frames are on every primary: ${r.large!.perPrimary.map((p) => p.bytes).join(', ')}`);
  t.same(readdirSync(dir), [], 'the servers and their files are gone');
});
