// Every option of every command against its rule (src/cli/validate.ts), in-process through the
// parser main.ts runs (parseArgs): each number option refuses what is not a number, NaN, a
// fraction where it counts, values past its bounds, and takes its bounds; each format option
// refuses a wrong value in every command that has it. A number option without a rule, or a
// string option nobody classified, fails here: a new option cannot skip validation.
// cli-bad-input.test.ts runs the kinds of mistake through the real CLI, one process each.
import t, { type Test } from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { commands, registry } from '../../src/cli/commands/index.js';
import { commandName } from '../../src/cli/config-file.js';
import { parseArgs } from '../../src/cli/parser.js';
import { NUMBER_RULES, TEXT_RULES } from '../../src/cli/validate.js';

const DEAD = 'redis://127.0.0.1:1';
const Q = ['--', 'qemu-system-x86_64'];

/** Arguments that make each command's parse succeed: [before the option, after it]. */
const BASE: Record<string, [string[], string[]]> = {
  run: [['--vm', 'a'], Q],
  attach: [['--vm', 'a', '--domain', 'd'], []],
  recover: [['--vm', 'a'], []],
  inspect: [['--vm', 'a'], []],
  delete: [['--vm', 'a'], []],
  status: [[], []],
  gc: [[], []],
  sidecar: [['--vm', 'a', '--recover'], []],
  bench: [['diff'], []],
  demo: [[], []],
  'demo-migrate': [[], []],
  doctor: [[], []],
  agent: [['--host', 'h', '--listen', '127.0.0.1:7', '--redis', DEAD], []],
  migrate: [['--vm', 'a', '--to', '127.0.0.1:7', '--from', '127.0.0.1:8', '--mode', 'hybrid'], []],
};

/** String options whose value is free-form, or checked with others (redis-auth.ts, tls-options.ts, ...). */
const FREE_FORM = new Set([
  'state-dir', // ensurePrivateDir when used
  'run-dir',
  'log-level', // a coerce (parseLogLevel)
  'domain', // libvirt's names
  'libvirt-uri',
  'redis-user',
  'redis-password',
  'redis-password-file', // redis-auth.ts, with --redis
  'redis-sentinel-password-file',
  'redis-ca',
  'redis-cert',
  'redis-key',
  'tls-dir', // tls-options.ts, together
  'tls-cert',
  'tls-key',
  'record-key', // record-key.ts, at parse time
  'tls-ca',
  'tls-allow',
  'tls-allow-vm', // tls-options.ts vmAllowFromArgs, in the agent's checks
  'config',
  'command', // config check: checked against the registry
]);

/** A wrong value of each format option, and what its message says. */
const BAD_TEXT: Record<string, [string, RegExp]> = {
  'gate-in': ['10.0.0.300:7', /--gate-in 10.0.0.300:7: give the guest's IPv4 address and a UDP port/],
  vm: ['a b', /invalid VM id "a b"/],
  host: ['a|b', /use 1-64 letters/],
  redis: ['http://x', /--redis http:\/\/x: use redis:\/\/HOST:PORT/],
  durability: ['sometimes', /use auto, fsync, none or replicas:N/],
  codec: ['zstd:99', /zstd takes a whole number from 0 to 22/],
  metrics: ['9464', /must be ADDR:PORT/],
  listen: ['127.0.0.1', /is not HOST:PORT/],
  to: ['nowhere', /is not HOST:PORT/],
  from: ['h:0', /is not HOST:PORT \(port 1\.\.65535\)/],
  vms: ['/nonexistent/vms.json', /cannot read it \(ENOENT\)/],
  pidfile: ['/nonexistent/pid', /its directory \/nonexistent cannot be used/],
  'status-file': ['/nonexistent/status.json', /its directory \/nonexistent cannot be used/],
  qmp: ['/nonexistent.sock', /no such socket/],
  ft: ['/nonexistent.sock', /no such socket/],
  ram: ['/nonexistent.ram', /cannot read it/],
  corpus: ['/nonexistent.pairs', /cannot read it/],
  'qemu-binary': ['/nonexistent/qemu', /not an executable file/],
};

/** The command's base arguments with `--NAME VALUE` in place of the base's own --NAME. */
function args(verb: string, ...opt: string[]): string[] {
  const [pre, post] = BASE[verb]!;
  const i = opt.length ? pre.indexOf(opt[0]!) : -1;
  const kept = i < 0 ? pre : [...pre.slice(0, i), ...pre.slice(i + 2)];
  return [verb, ...kept, ...opt, ...post];
}
const command = (verb: string) => commands.find((c) => commandName(c) === verb)!;

async function refused(t: Test, verb: string, opt: string[], want: RegExp): Promise<void> {
  try {
    await parseArgs(command(verb), args(verb, ...opt));
    t.fail(`migsafe ${verb} ${opt.join(' ')}: accepted`);
  } catch (e) {
    const got = (e as Error).message;
    t.ok(want.test(got), `migsafe ${verb} ${opt.join(' ')}: refused`, want.test(got) ? {} : { got, want: String(want) });
  }
}

for (const k of Object.keys(process.env)) if (k.startsWith('MIGSAFE_')) delete process.env[k];

t.test('every command is covered here', async (t) => {
  t.same(Object.keys(BASE).sort(), [...registry().keys()].sort());
});

t.test('every number option has bounds, refuses what is outside them and takes them', async (t) => {
  const seen = new Set<string>();
  for (const [verb, opts] of registry()) {
    for (const [name, spec] of opts) {
      if (spec.type !== 'number') continue;
      const r = NUMBER_RULES[name];
      if (!r) {
        t.fail(`--${name} of migsafe ${verb} has no rule in NUMBER_RULES (src/cli/validate.ts)`);
        continue;
      }
      const msg = (v: string) => new RegExp(`^--${name} ${v.replace(/[.+]/g, '\\$&')}: give ${r.int ? 'a whole number' : 'a number'}`);
      const bad = ['abc', 'NaN', '1e300', String(r.min - 1), ...(r.int ? [`${r.min}.5`] : []), ...(r.max < Number.MAX_SAFE_INTEGER ? [String(r.max + 1)] : [])];
      // The rule is the option's, whatever the command: every value once, then one per command.
      for (const v of seen.has(name) ? bad.slice(0, 1) : bad) await refused(t, verb, [`--${name}`, v], msg(v));
      seen.add(name);
      // The bounds themselves pass (the heartbeat pair has to agree: checked in cli-bad-input).
      if (name === 'hb-interval' || name === 'hb-timeout') continue;
      for (const v of [r.min, Math.min(r.max, 2 ** 31 - 1)]) {
        const got = await parseArgs(command(verb), args(verb, `--${name}`, String(v)));
        t.equal(got[name], v, `migsafe ${verb} --${name} ${v}: taken`);
      }
    }
  }
});

t.test('every format option refuses a wrong value in every command that has it', async (t) => {
  for (const [verb, opts] of registry()) {
    for (const [name, spec] of opts) {
      if (spec.type !== 'string' && spec.type !== 'array') continue;
      if (spec.choices) continue; // yargs' choices, rewritten by the parser (cli-bad-input)
      const rule = TEXT_RULES[name];
      if (!rule) {
        t.ok(FREE_FORM.has(name), `--${name} of migsafe ${verb}: a rule in TEXT_RULES, or listed as free-form here`);
        continue;
      }
      const [v, want] = BAD_TEXT[name] ?? ['', /no bad value listed/];
      t.ok(BAD_TEXT[name], `--${name}: a wrong value to try is listed here`);
      if (rule.except?.includes(verb)) {
        await parseArgs(command(verb), args(verb, `--${name}`, v));
        t.pass(`migsafe ${verb} --${name} ${v}: left to the command (${verb} reports it)`);
        continue;
      }
      await refused(t, verb, [`--${name}`, v], new RegExp(`--${name}\\b.*${want.source.replace(`--${name} `, '')}`));
    }
  }
});

t.test('a config file value or a variable is checked by the same rule, and its source named', async (t) => {
  process.env.MIGSAFE_LEASE_TTL = '10';
  try {
    await refused(t, 'agent', [], /^--lease-ttl 10 \(from MIGSAFE_LEASE_TTL\): give a whole number from 500/);
  } finally {
    delete process.env.MIGSAFE_LEASE_TTL;
  }
  process.env.MIGSAFE_VM = 'x y';
  try {
    await refused(t, 'gc', [], /^--vm x y \(from MIGSAFE_VM\): invalid VM id/);
  } finally {
    delete process.env.MIGSAFE_VM;
  }
});

t.test('config check refuses a value the commands would refuse', async (t) => {
  const cfg = join(mkdtempSync(join(tmpdir(), 'migsafe-rules-')), 'c.toml');
  writeFileSync(cfg, '[agent]\nhb-interval = 5\n');
  const cmd = commands.find((c) => commandName(c) === 'config')!;
  await t.rejects(parseArgs(cmd, ['config', 'check', '--config', cfg]), /^--hb-interval 5 \(from the config file\): give a whole number from 10/);
  writeFileSync(cfg, '[agent]\nhb-interval = 50\n');
  t.ok(await parseArgs(cmd, ['config', 'check', '--config', cfg]), 'a good value passes');
});
