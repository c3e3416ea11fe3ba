// What an operator sees: the real CLI under a pseudo-terminal (util-linux `script`) writes
// pino-pretty lines and progress bars (the read, then the recovery steps); through a pipe the same command writes JSON lines only
// (vm and version fields, progress as debug lines with done/total), and never a password.
// The command: `recover` of a small checkpoint written here, with a QEMU binary that exits at
// once — it reads (and shows progress of) the whole checkpoint before failing to start QEMU.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { native } from '../../src/kernel/native.js';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import { parseCodec } from '../../src/store/frame.js';
import { testClient, testRedis } from '../helpers/redis.js';
import { cliEnv, logLines, runCli } from '../helpers/cli.js';

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli', 'main.js');
const PAGES = 1024;
const VM = 'logvm';

/** One committed version of a 4 MiB guest, in many small frames (so that reading it makes progress). */
async function writeCheckpoint(store: CheckpointStore): Promise<number> {
  const codec = parseCodec('none');
  await store.init(['/bin/false', '-m', '4M'], PAGES * 4096);
  const ram = Buffer.alloc(PAGES * 4096);
  for (let p = 0; p < PAGES; p += 3) ram[p * 4096 + (p % 4096)] = 1 + (p % 250);
  const all = native().scanDirty(ram, Buffer.alloc(ram.length));
  const pending = await store.begin(0);
  let pages = 0;
  for (let at = 0; at < all.length; at += 16) {
    const raw = native().encodeBatch(ram, Buffer.alloc(ram.length), all.subarray(at, at + 16));
    pages += await pending.addPages(raw, codec);
  }
  await pending.setDevice(Buffer.from('device'), codec);
  const meta = await pending.commit({ pages, bytesRaw: pages * 4096, pauseMs: 0, deviceStateBytes: 6, dirtySource: 'scan', codec: 'none:0', stage1Pages: pages, stage2Pages: 0 });
  return meta.version;
}

const hasScript = spawnSync('script', ['--version']).status === 0;

t.test('a terminal gets readable lines and a bar; a pipe gets JSON lines', { skip: hasScript ? false : 'util-linux `script` is not installed' }, async (t) => {
  const srv = await testRedis(t);
  const version = await writeCheckpoint(new CheckpointStore(testClient(t, srv.url), VM));
  const env = cliEnv(t);
  const args = ['recover', '--vm', VM, '--redis', srv.url, '--detach', '--dirty-source', 'scan', '--lease-ttl', '500'];

  // Under a pseudo-terminal: stderr is a TTY.
  const cmd = [process.execPath, MAIN, ...args].map((a) => `'${a}'`).join(' ');
  const pty = spawnSync('script', ['-qefc', cmd, '/dev/null'], { env: { ...env, NO_COLOR: '1', COLUMNS: '120' }, encoding: 'utf8', timeout: 60_000 });
  const seen = pty.stdout.replace(/\r/g, '\n');
  t.equal(pty.status, 2, 'recover fails: the QEMU binary exits at once');
  t.match(seen, new RegExp(`\\[\\d\\d:\\d\\d:\\d\\d\\.\\d{3}\\] INFO: ${VM}: restoring version ${version} \\(from a zero image \\+ 1 version\\(s\\)\\)`), 'a pretty line: time, level, vm, message');
  t.match(seen, new RegExp(`${VM}: reading checkpoint \\[=+-*\\] 100% \\d+/\\d+ frames`), 'a progress bar that reached 100 %');
  t.match(seen, new RegExp(`${VM}: recovery \\[[=-]+\\] \\d+% [01]/3 steps \\((writing the RAM file|starting QEMU)\\)`), "then the recovery's steps as a bar, naming the step");
  t.match(seen, new RegExp(`FATAL: ${VM}: QEMU exited \\(1\\) before its QMP socket came up`), 'the failure as a pretty line, naming the VM');
  t.notMatch(seen, /^\{"level"/m, 'no JSON line on the terminal');

  // Through a pipe: JSON lines only, no bar; --log-level debug adds the progress lines.
  const piped = await runCli([...args, '--log-level', 'debug'], env, 60_000);
  t.equal(piped.code, 2);
  const lines = piped.rawStderr.split('\n').filter(Boolean);
  const json = logLines(piped.rawStderr);
  t.equal(json.length, lines.length, 'every stderr line is a JSON object');
  t.notMatch(piped.rawStderr, /\[=+/, 'no progress bar');
  t.match(json.find((l) => /^restoring version/.test(String(l.msg))), { level: 'info', vm: VM, version }, 'the restore line carries vm and version');
  const progress = json.filter((l) => l.op === 'read-checkpoint');
  t.ok(progress.length >= 2, 'progress as log lines: start and end');
  t.match(progress.at(-1), { level: 'debug', vm: VM, version, unit: 'frames' });
  t.equal(progress.at(-1)!.done, progress.at(-1)!.total, 'the last one: all frames read');
  t.match(json.at(-1), { level: 'fatal', vm: VM, msg: /QEMU exited \(1\) before its QMP socket came up/ });
  const steps = json.filter((l) => l.op === 'recovery').map((l) => l.phase);
  t.same([...new Set(steps)], ['writing the RAM file', 'starting QEMU'], 'the recovery steps reached, as log lines with phase (QEMU then died)');

  // The default level hides debug lines; a higher one hides the info lines too.
  const quiet = await runCli([...args, '--log-level', 'error'], env, 60_000);
  t.same(logLines(quiet.rawStderr).map((l) => l.level), ['fatal'], '--log-level error: only the failure');
  const fromEnv = await runCli(args, { ...env, MIGSAFE_LOG_LEVEL: 'warn' }, 60_000);
  t.notOk(logLines(fromEnv.rawStderr).some((l) => l.level === 'info'), 'MIGSAFE_LOG_LEVEL=warn: no info lines');
});

t.test('a password in --redis never reaches the log', async (t) => {
  const r = await runCli(['inspect', '--vm', VM, '--redis', 'redis://:topsecret@127.0.0.1:1/0'], cliEnv(t), 30_000);
  t.equal(r.code, 2);
  t.match(r.stderr, /cannot reach Redis at redis:\/\/:\*\*\*@127\.0\.0\.1:1\/0/, 'the URL is named, masked');
  t.notMatch(r.rawStderr, /topsecret/);
  const bad = await runCli(['inspect', '--vm', VM, '--log-level', 'loud'], cliEnv(t), 30_000);
  t.match(bad.stderr, /--log-level "loud": use one of trace, debug, info, warn, error, fatal, silent/);
});

