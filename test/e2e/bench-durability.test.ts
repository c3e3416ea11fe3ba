// `npm run bench:durability`: its command line, and one tiny run of the real entry point
// against the real redis-servers it starts — each policy measured a round, fsync's server
// really on appendfsync always, the replica really holding the versions it acknowledged, and
// nothing left behind. Speed is not asserted (the benchmark reports it as ratios).
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseDurabilityArgs, type DurabilityBenchResult } from '../../bench/durability.js';
import { corpusDir } from '../unit/corpus.js';

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bench', 'durability-main.js');

t.test('arguments: defaults, and bad ones named with the fix', async (t) => {
  const d = parseDurabilityArgs([]);
  t.match(d, { reps: 12, ramMiB: 256, codec: 'zstd:1', json: false, help: false });
  t.match(parseDurabilityArgs(['--reps', '3', '--ram-mib', '16', '--codec', 'lz4', '--json']), { reps: 3, ramMiB: 16, codec: 'lz4', json: true });
  t.throws(() => parseDurabilityArgs(['--reps', '0']), /--reps 0: give a whole number of at least 1/);
  t.throws(() => parseDurabilityArgs(['--ram-mib', '1.5']), /--ram-mib 1\.5: give a whole number/);
  t.throws(() => parseDurabilityArgs(['--rep', '3']), /--rep[\s\S]*usage: npm run bench:durability/);
  t.throws(() => parseDurabilityArgs(['--codec', 'zip']), /zip/);
});

t.test('a run of one round per policy', async (t) => {
  const corpus = corpusDir();
  if (!corpus) throw new Error('no corpus: set MIGSAFE_CORPUS to the directory of the .pairs files');
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-benchdur-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const child = spawn(process.execPath, [MAIN, '--reps', '1', '--ram-mib', '16', '--json', '--dir', dir], {
    env: { ...process.env, MIGSAFE_CORPUS: corpus },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (err += s));
  const code = await new Promise((r) => child.once('exit', r));
  t.equal(code, 0, `exit 0 (${err.trim().split('\n').pop()})`);
  const r = JSON.parse(out) as DurabilityBenchResult;
  t.same(r.policies.map((p) => p.policy), ['none', 'fsync', 'replicas:1'], 'all three policies, side by side');
  t.ok(r.dirtyPages > 0, `${r.dirtyPages} dirty pages`);
  for (const p of r.policies) {
    t.equal(p.rounds, 1, `${p.policy}: one measured round`);
    t.equal(p.pages, r.dirtyPages, `${p.policy}: the round checkpointed every dirty page`);
    t.ok(p.bytesStored > 0, `${p.policy}: bytes stored`);
    t.ok(p.commitMsMedian > 0 && p.commitMsP95 >= p.commitMsMedian, `${p.policy}: commit ${p.commitMsMedian} ms`);
    t.ok(p.pagesPerSecMedian > 0 && Number.isFinite(p.pagesPerSecRatio), `${p.policy}: ${p.pagesPerSecMedian} pages/s`);
  }
  const [none, fsync, replicas] = r.policies;
  t.equal(none!.commitRatio, 1, 'ratios are against none');
  t.equal(none!.appendfsync, 'everysec', 'none: migsafe’s own server as it starts');
  t.equal(fsync!.appendfsync, 'always', 'fsync: the server was switched to appendfsync always');
  t.equal(replicas!.replicaHeld, 1, 'replicas:1: the replica held the acknowledged version');
  t.same(readdirSync(dir), [], 'the servers’ directory is removed');
});
