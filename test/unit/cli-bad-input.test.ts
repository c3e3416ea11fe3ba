// Bad input on the command line, through the real CLI (`node dist/src/cli/main.js …`, as a user
// runs it; no Redis, no QEMU: every --redis is a closed port, so a row that got past validation
// fails on the connection instead, and its message is then wrong). A row per kind of mistake per
// option; each must exit with status 2 (a usage error), say `migsafe: ` and a message that names
// the option and what it takes, print nothing on stdout and no stack trace. Every number and
// format option of every command, and the rest of each kind, is swept in-process in
// cli-option-rules.test.ts (the same parser, without a process per case).
import t from 'tap';
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli', 'main.js');
const DEAD = 'redis://127.0.0.1:1';
const Q = ['--', 'qemu-system-x86_64', '-m', '64M'];

const dir = mkdtempSync(join(tmpdir(), 'migsafe-bad-input-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
function file(name: string, text: string, mode = 0o600): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  chmodSync(p, mode);
  return p;
}
const state = join(dir, 'state');
const run = join(dir, 'run');
mkdirSync(state, { mode: 0o700 });
mkdirSync(run, { mode: 0o700 });
const aDir = join(dir, 'a-directory');
mkdirSync(aDir);
const openPw = file('open.pass', 'pw\n', 0o644);
const emptyPw = file('empty.pass', '');
const notPem = file('not.pem', 'hello\n');
const plain = file('plain', 'x');
const vmA = (vm: string) => ({ vm, argv: ['qemu-system-x86_64', '-m', '64M'] });
const vmsBadJson = file('bad.json', '[{"vm": ');
const vmsBadId = file('bad-id.json', JSON.stringify([vmA('a b')]));
const vmsTwo = file('two.json', JSON.stringify([vmA('a'), vmA('b')]));
const vmsA = file('a.json', JSON.stringify([vmA('a')]));
const cfgUnknown = file('unknown.toml', '[agent]\nric-intervl = 5\n');
const cfgRange = file('range.toml', 'interval = -5\n');
const cfgYaml = file('c.yaml', 'interval: 5\n');
const sock = join(dir, 'qmp.sock');
const server = createServer().listen(sock);
t.teardown(() => server.close());

const AG = ['agent', '--host', 'h', '--listen', '127.0.0.1:7', '--redis', DEAD];
const MIG = ['migrate', '--vm', 'a', '--to', '127.0.0.1:7', '--from', '127.0.0.1:8'];
const INS = ['inspect', '--vm', 'a', '--redis', DEAD];
const RUN = (...o: string[]) => ['run', '--vm', 'a', '--redis', DEAD, ...o, ...Q];
const TLS_RUN = (...o: string[]) => ['inspect', '--vm', 'a', '--redis', 'rediss://127.0.0.1:1', ...o];

interface Row {
  /** What is wrong. */
  name: string;
  args: string[];
  env?: Record<string, string>;
  /** The thing named in the message (an option, the command, `--`). */
  names: string;
  /** The message: what was wrong and what is accepted. */
  want: RegExp;
}

const NUM = (lo: number, hi = 2147483647, unit = 'ms') => new RegExp(`give a whole number from ${lo} to ${hi} \\(${unit}\\)`);
const rows: Row[] = [
  // The command itself.
  { name: 'unknown command', args: ['frobnicate'], names: 'frobnicate', want: /unknown command "frobnicate": the commands are run, attach, recover/ },
  { name: 'misspelt command', args: ['inspec', '--vm', 'a'], names: 'inspec', want: /unknown command "inspec" \(did you mean inspect\?\)/ },
  { name: 'no command', args: [], names: 'command', want: /name a command: migsafe <command> \[options\], one of run, attach/ },
  { name: 'bench without <what>', args: ['bench'], names: 'bench', want: /migsafe bench needs what to do: migsafe bench <what>/ },
  { name: 'bench, unknown <what>', args: ['bench', 'frob'], names: '<what>', want: /<what> "frob": choose one of "diff"/ },
  { name: 'a stray word', args: [...INS, 'extra'], names: 'extra', want: /unexpected argument "extra" for migsafe inspect: options start with --/ },
  // Options the command does not have, values missing, given twice.
  { name: 'unknown option', args: [...INS, '--bogus'], names: '--bogus', want: /unknown option --bogus for migsafe inspect/ },
  { name: 'misspelt option', args: RUN('--intervall', '50'), names: '--intervall', want: /unknown option --intervall for migsafe run: did you mean --interval\?/ },
  { name: 'missing value at the end', args: ['inspect', '--vm'], names: '--vm', want: /--vm needs a value: give --vm ID/ },
  { name: 'missing value before --', args: ['run', '--vm', 'a', '--redis', DEAD, '--interval', ...Q], names: '--interval', want: /--interval needs a value \(the `--` after it starts the QEMU command line\)/ },
  { name: 'empty value', args: ['inspect', '--vm', 'a', '--redis='], names: '--redis', want: /--redis is empty: give --redis VALUE, or leave the option out/ },
  { name: 'required option missing', args: ['inspect', '--redis', DEAD], names: '--vm', want: /migsafe inspect needs --vm: give it/ },
  { name: 'option given twice', args: ['inspect', '--vm', 'a', '--vm', 'b'], names: '--vm', want: /--vm is given twice \("a" and "b"\): give it once/ },
  { name: 'flag given a value', args: [...INS, '--json=maybe'], names: '--json', want: /--json is a flag: give --json or --no-json, without a value/ },
  { name: 'secret on the command line', args: [...INS, '--redis-password', 'pw'], names: '--redis-password', want: /refused on the command line.*--redis-password-file FILE/ },
  // Numbers: not one, negative, zero, NaN, out of range, fractional, a duration with a unit.
  { name: 'not a number', args: RUN('--interval', 'abc'), names: '--interval', want: NUM(10) },
  { name: 'negative', args: RUN('--interval', '-5'), names: '--interval', want: NUM(10) },
  { name: 'zero', args: RUN('--interval', '0'), names: '--interval', want: NUM(10) },
  { name: 'past a timer (fires at once)', args: RUN('--interval', '1e12'), names: '--interval', want: NUM(10) },
  { name: 'duration with a unit', args: RUN('--max-time', '10s'), names: '--max-time', want: NUM(0) },
  { name: 'agent interval negative', args: [...AG, '--interval', '-1'], names: '--interval', want: NUM(10) },
  { name: 'migrate bandwidth not a number', args: [...MIG, '--bandwidth', 'fast'], names: '--bandwidth', want: NUM(0, 1048576, 'MiB/s') },
  { name: 'demo versions zero', args: ['demo', '--versions', '0'], env: { PATH: '/nonexistent' }, names: '--versions', want: NUM(1, 50, 'versions') },
  { name: 'from the environment', args: RUN(), env: { MIGSAFE_INTERVAL: '-3' }, names: '--interval', want: /--interval -3 \(from MIGSAFE_INTERVAL\): give a whole number/ },
  { name: 'from the config file', args: RUN('--config', cfgRange), names: '--interval', want: /--interval -5 \(from the config file\): give a whole number/ },
  // Ids, names, addresses, formats.
  { name: 'VM id with a space', args: ['inspect', '--vm', 'a b', '--redis', DEAD], names: '--vm', want: /invalid VM id "a b": use 1-64 letters, digits/ },
  { name: 'VM id (agent)', args: [...AG, '--vm', 'x/y', ...Q], names: '--vm', want: /invalid VM id "x\/y"/ },
  { name: 'Redis URL, http scheme', args: ['inspect', '--vm', 'a', '--redis', 'http://x'], names: '--redis', want: /--redis http:\/\/x: use redis:\/\/HOST:PORT, rediss:\/\/HOST:PORT, a unix socket path/ },
  { name: 'Redis URL, no scheme', args: ['status', '--redis', 'localhost:6379'], names: '--redis', want: /--redis localhost:6379: use redis:\/\/HOST:PORT/ },
  { name: 'Redis URL, bad port', args: [...AG.slice(0, 5), '--redis', 'redis://h:99999'], names: '--redis', want: /--redis redis:\/\/h:99999: cannot read it; the form is redis\[s\]:\/\// },
  { name: 'listen: not loopback without TLS', args: ['agent', '--host', 'h', '--listen', '10.0.0.1:7400', '--redis', DEAD], names: '--listen', want: /--listen 10\.0\.0\.1:7400 is not a loopback address and TLS is off: give --tls-dir DIR/ },
  { name: 'migrate from: not loopback without TLS', args: ['migrate', '--vm', 'a', '--to', '127.0.0.1:7', '--from', '10.0.0.1:7400'], names: '--from', want: /--from 10\.0\.0\.1:7400 is not a loopback address and TLS is off/ },
  { name: 'metrics: a port alone', args: RUN('--metrics', '9464'), names: '--metrics', want: /--metrics must be ADDR:PORT, e\.g\. 127\.0\.0\.1:9464/ },
  { name: 'durability unknown', args: RUN('--durability', 'sometimes'), names: '--durability', want: /--durability sometimes: use auto, fsync, none or replicas:N\[:TIMEOUT_MS\]/ },
  { name: 'durability: WAIT forever', args: ['doctor', '--durability', 'replicas:1:0'], names: '--durability', want: /--durability replicas:1:0: use auto.*WAIT 0 would wait forever/ },
  { name: 'codec unknown', args: RUN('--codec', 'brotli'), names: '--codec', want: /--codec brotli: unknown codec "brotli": use one of none, gzip, lz4, zstd/ },
  { name: 'codec level out of range', args: [...AG, '--codec', 'gzip:15'], names: '--codec', want: /gzip takes a whole number from 0 to 9, e\.g\. gzip:1/ },
  { name: 'choice unknown', args: RUN('--dirty-source', 'magic'), names: '--dirty-source', want: /--dirty-source "magic": choose one of "auto", "bitmap", "scan"/ },
  { name: 'accelerator unknown', args: ['demo', '--accel', 'hvf'], env: { PATH: '/nonexistent' }, names: '--accel', want: /--accel "hvf": choose one of "tcg", "kvm"/ },
  { name: 'log level unknown', args: [...INS, '--log-level', 'loud'], names: '--log-level', want: /--log-level "loud": use one of trace, debug, info/ },
  // Files.
  { name: '--vms missing', args: [...AG, '--vms', join(dir, 'none.json')], names: '--vms', want: /--vms .*none\.json: cannot read it \(ENOENT\): give a JSON file of the VMs/ },
  { name: '--vms not JSON', args: [...AG, '--vms', vmsBadJson], names: '--vms', want: /--vms .*bad\.json: not JSON .*; give a JSON array of \{"vm"/ },
  { name: '--vms with a bad id', args: [...AG, '--vms', vmsBadId], names: '--vms', want: /--vms .*, entry 1: invalid VM id "a b"/ },
  { name: 'password file missing', args: [...INS, '--redis-password-file', join(dir, 'none')], names: '--redis-password-file', want: /cannot read it \(ENOENT\): give a file holding the password/ },
  { name: 'password file readable by all', args: [...INS, '--redis-password-file', openPw], names: '--redis-password-file', want: /other users can read or write it \(mode 644\): `chmod 600/ },
  { name: 'password file empty', args: [...INS, '--redis-password-file', emptyPw], names: '--redis-password-file', want: /its first line is empty: put the password there/ },
  { name: 'Redis CA missing', args: TLS_RUN('--redis-ca', join(dir, 'none.pem')), names: '--redis-ca', want: /--redis-ca .*: cannot read it \(ENOENT\): give a PEM file/ },
  { name: 'Redis client key unreadable', args: TLS_RUN('--redis-cert', notPem, '--redis-key', aDir), names: '--redis-', want: /--redis-(cert|key) .*: not a (PEM file|file)/ },
  { name: 'control TLS dir missing', args: [...AG, '--tls-dir', join(dir, 'no-tls')], names: '--tls-dir', want: /--tls-dir \(cert\.pem\) .*ENOENT.*give a PEM file/ },
  { name: 'config file missing', args: [...INS, '--config', join(dir, 'none.toml')], names: '--config', want: /cannot read the config file .*none\.toml: ENOENT; give an existing file to --config/ },
  { name: 'config file not TOML or JSON', args: [...INS, '--config', cfgYaml], names: 'c.yaml', want: /a config file must be \.toml or \.json/ },
  { name: 'config file, unknown key', args: [...AG, '--config', cfgUnknown], names: 'ric-intervl', want: /unknown key "ric-intervl" in \[agent\]: did you mean "ric-interval"\?/ },
  { name: 'config check, missing file', args: ['config', 'check', '--config', join(dir, 'none.toml')], names: '--config', want: /cannot read the config file/ },
  { name: 'config check, unknown command', args: ['config', 'check', '--command', 'frob'], names: '--command', want: /--command frob: no such command; one of run, attach/ },
  { name: 'pidfile in a missing directory', args: RUN('--pidfile', join(dir, 'no', 'pid')), names: '--pidfile', want: /--pidfile .*: its directory .* cannot be used \(ENOENT\): create it/ },
  { name: 'QMP socket missing', args: ['attach', '--vm', 'a', '--redis', DEAD, '--qmp', join(dir, 'none.sock'), '--ram', plain], names: '--qmp', want: /--qmp .*: no such socket \(ENOENT\): give the path of the QEMU's QMP socket/ },
  { name: 'RAM file missing', args: ['attach', '--vm', 'a', '--redis', DEAD, '--qmp', sock, '--ram', join(dir, 'none.ram')], names: '--ram', want: /--ram .*: cannot read it \(ENOENT\): give the guest RAM file/ },
  { name: 'QEMU binary missing', args: ['recover', '--vm', 'a', '--redis', DEAD, '--qemu-binary', join(dir, 'no-qemu')], names: '--qemu-binary', want: /not an executable file: give the path of a QEMU binary/ },
  { name: 'corpus file missing', args: ['bench', 'diff', '--corpus', join(dir, 'none.pairs')], names: '--corpus', want: /--corpus .*: cannot read it \(ENOENT\): give a \.pairs file/ },
  // Options that contradict each other, or need another.
  { name: 'run without a QEMU command line', args: ['run', '--vm', 'a', '--redis', DEAD], names: '`--`', want: /no QEMU command line: give it after `--`/ },
  { name: 'recover given a QEMU command line', args: ['recover', '--vm', 'a', '--redis', DEAD, ...Q], names: 'recover', want: /migsafe recover takes no QEMU command line/ },
  { name: 'sidecar --version without --recover', args: ['sidecar', '--vm', 'a', '--redis', DEAD, '--version', '3', ...Q], names: '--version', want: /--version is for recovering \(with --recover\): add --recover/ },
  { name: 'attach without --qmp/--ram/--domain', args: ['attach', '--vm', 'a', '--redis', DEAD], names: '--qmp', want: /give --qmp SOCK and --ram FILE .*, or --domain NAME/ },
  { name: 'agent: heartbeat timeout under the interval', args: [...AG, '--hb-interval', '500', '--hb-timeout', '400'], names: '--hb-timeout', want: /--hb-timeout 400 must be longer than --hb-interval 500/ },
  { name: 'agent: a QEMU command line without --vm', args: [...AG, ...Q], names: '--vm', want: /a QEMU command line after `--` needs --vm ID/ },
  { name: 'agent: --vm without a QEMU command line', args: [...AG, '--vm', 'a'], names: '`--`', want: /no QEMU command line: give it after `--`/ },
  { name: 'agent: --vm also in --vms', args: [...AG, '--no-gate', '--vms', vmsA, '--vm', 'a', ...Q], names: '--vms', want: /--vm a is also in --vms .*: give it once/ },
  { name: 'agent: two VMs with the gate', args: [...AG, '--vms', vmsTwo], names: '--no-gate', want: /2 VMs with the output gate: .* add --no-gate/ },
  { name: 'migrate: neither --from nor --redis', args: ['migrate', '--vm', 'a', '--to', '127.0.0.1:7'], names: '--from', want: /give --from ADDR:PORT .* or --redis URL/ },
  { name: 'migrate: --postcopy-after without hybrid', args: [...MIG, '--postcopy-after', '100'], names: '--postcopy-after', want: /--postcopy-after is for --mode hybrid \(got --mode precopy\)/ },
  { name: 'Redis credentials without --redis', args: ['inspect', '--vm', 'a', '--redis-user', 'app'], names: '--redis-user', want: /--redis-user is set, but there is no --redis/ },
  { name: 'Redis CA on a plain URL', args: [...INS, '--redis-ca', notPem], names: '--redis-ca', want: /--redis-ca is for TLS: use a rediss:\/\/HOST:PORT URL/ },
  { name: 'TLS files incomplete', args: [...MIG, '--tls-cert', notPem], names: '--tls-key', want: /TLS needs --tls-cert, --tls-key and --tls-ca together: --tls-key, --tls-ca missing/ },
  { name: 'TLS allow without TLS', args: ['status', '--redis', DEAD, '--tls-allow', 'x'], names: '--tls-allow', want: /--tls-allow needs TLS: give --tls-dir DIR/ },
];

interface Got {
  code: number | string;
  stdout: string;
  stderr: string;
  ms: number;
}

/**
 * The environment of every row: private state and run directories, no MIGSAFE_* of the caller's,
 * and none of tap's NODE_OPTIONS (its loaders would triple the start-up of every row).
 */
const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(MIGSAFE_|NODE_OPTIONS$|_?TAP)/.test(k)));
function runRow(r: Row): Promise<Got> {
  const start = Date.now();
  const child = spawn(process.execPath, [MAIN, ...r.args], {
    env: { ...base, MIGSAFE_STATE_DIR: state, MIGSAFE_RUN_DIR: run, ...r.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  return new Promise((res) =>
    child.once('close', (c, s) => {
      clearTimeout(timer);
      res({ code: c ?? s ?? -1, stdout, stderr, ms: Date.now() - start });
    }),
  );
}

/** Runs every row, `width` at a time (2 shared cores: node's start-up is most of a row). */
async function runAll(width: number): Promise<Got[]> {
  const out: Got[] = new Array(rows.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < rows.length) {
        const i = next++;
        out[i] = await runRow(rows[i]!);
      }
    }),
  );
  return out;
}

const STACK = /^\s+at .+(\(.*:\d+:\d+\)|:\d+:\d+)$|node:internal|\.[jt]s:\d+:\d+/m;

t.test(`${rows.length} kinds of bad input: status 2, the option named with what it takes, no stdout, no stack`, async (t) => {
  const started = Date.now();
  const got = await runAll(3);
  rows.forEach((r, i) => {
    const g = got[i]!;
    const what = `${r.name}: migsafe ${r.args.join(' ')}`;
    const ok =
      g.code === 2 &&
      g.stdout === '' &&
      g.stderr.startsWith('migsafe: ') &&
      /\nRun `migsafe (\S+ )?--help` for usage\.\n$/.test(g.stderr) &&
      g.stderr.includes(r.names) &&
      r.want.test(g.stderr) &&
      !STACK.test(g.stderr);
    t.ok(ok, what, ok ? {} : { code: g.code, stdout: g.stdout, stderr: g.stderr, want: String(r.want), names: r.names });
  });
  t.comment(`${rows.length} rows in ${((Date.now() - started) / 1000).toFixed(1)} s (slowest ${Math.max(...got.map((g) => g.ms))} ms)`);
});
