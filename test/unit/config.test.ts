// The config file and MIGSAFE_* variables: what a file may say, how a mistake in it is
// reported, and the precedence command line > environment > config file > defaults, as the real
// parser (the one main.ts runs) applies it.
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { commands, registry } from '../../src/cli/commands/index.js';
import { readConfigFile, configFor, commandName } from '../../src/cli/config-file.js';
import { parseArgs } from '../../src/cli/parser.js';
import { effective } from '../../src/cli/commands/config.js';

const dir = mkdtempSync(join(tmpdir(), 'migsafe-config-test-'));
let n = 0;
function file(text: string, ext = 'toml'): string {
  const p = join(dir, `c${n++}.${ext}`);
  writeFileSync(p, text);
  return p;
}
const agent = commands.find((c) => commandName(c) === 'agent')!;

/** Runs `body` with these variables set (undefined: unset), then puts the environment back. */
async function withEnv<T>(vars: Record<string, string | undefined>, body: () => Promise<T>): Promise<T> {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  for (const [k, v] of Object.entries(vars)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  try {
    return await body();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

t.test('every command is in the registry with its options; a shared option has one type', async (t) => {
  const reg = registry();
  t.ok(reg.get('agent')?.has('ric-interval'), 'agent has --ric-interval');
  t.equal(reg.get('agent')?.get('interval')?.type, 'number');
  t.equal(reg.get('agent')?.get('gate')?.type, 'boolean');
  t.same(reg.get('agent')?.get('dirty-source')?.choices, ['auto', 'bitmap', 'scan']);
  t.equal(reg.get('recover')?.get('version')?.type, 'number', "recover's --version is an option (yargs' own is off)");
  t.notOk(reg.get('bench')?.has('what'), 'a positional is not a config key');
  t.notOk(reg.has('config'), 'config check has no table of its own');
  for (const opts of reg.values()) t.ok(opts.has('state-dir') && opts.has('run-dir') && !opts.has('config') && !opts.has('help'));
  const types = new Map<string, string>();
  for (const [cmd, opts] of reg) {
    for (const [k, s] of opts) {
      const seen = types.get(k);
      if (seen && seen !== s.type) t.fail(`--${k} is ${seen} in one command and ${s.type} in ${cmd}: a top-level key could not be checked`);
      types.set(k, s.type);
    }
  }
});

t.test('a file: top-level keys for every command that has them, a table for one command', async (t) => {
  const reg = registry();
  const f = readConfigFile(file('redis = "redis://10.0.0.3:6379"\ninterval = 700\n[agent]\ninterval = 600\nhost = "a"\n[inspect]\nvm = "web1"\n'), reg);
  t.same(configFor(f, 'agent', reg), { redis: 'redis://10.0.0.3:6379', interval: 600, host: 'a' }, 'the table wins over the top level');
  t.same(configFor(f, 'run', reg), { redis: 'redis://10.0.0.3:6379', interval: 700 });
  t.same(configFor(f, 'inspect', reg), { redis: 'redis://10.0.0.3:6379', vm: 'web1' }, 'inspect has no --interval: not given to it');
  t.same(configFor(f, 'bench', reg), {}, 'bench has neither');
  const j = readConfigFile(file('{"interval": 300, "agent": {"gate": false}}', 'json'), reg);
  t.same(configFor(j, 'agent', reg), { interval: 300, gate: false }, 'JSON works alike');
});

t.test('a mistake in a file names the file, the key and the fix', async (t) => {
  const reg = registry();
  const bad: [string, RegExp, string?][] = [
    ['intervl = 5\n', /c\d+\.toml: unknown key "intervl" at the top level: did you mean "interval"\?.*no command has this option/],
    ['maxPages = 5\n', /unknown key "maxPages" .*did you mean "max-pages"/],
    ['[agent]\npidfile = "x"\n', /unknown key "pidfile" in \[agent\].*migsafe agent --help/],
    ['[agnt]\nhost = "a"\n', /unknown key "agnt" \(a table\): did you mean "agent"\?.*a table must name a command/],
    ['interval = "5"\n', /c\d+\.toml: interval is string "5", but it takes a number without quotes/],
    ['[agent]\ngate = "no"\n', /\[agent\] gate is string "no", but it takes true or false/],
    ['[agent]\nhost = 5\n', /\[agent\] host is number 5, but it takes a quoted string/],
    ['[agent]\ndirty-source = "fast"\n', /\[agent\] dirty-source is "fast": choose one of "auto", "bitmap", "scan"/],
    ['interval = \n', /not valid TOML: .* at line 1, column \d+/],
    ['{"interval": 1,}', /c\d+\.json: not valid JSON/, 'json'],
    ['interval: 1\n', /must be \.toml or \.json \(got "\.yaml"\)/, 'yaml'],
  ];
  for (const [text, re, ext] of bad) t.throws(() => readConfigFile(file(text, ext), reg), re, JSON.stringify(text));
  t.throws(() => readConfigFile(join(dir, 'missing.toml'), reg), /cannot read the config file .*missing\.toml: ENOENT/);
});

t.test('precedence: command line > environment > config file > defaults (the real parser)', async (t) => {
  const cfg = file(
    'interval = 700\nmax-pages = 11\n[agent]\nhost = "from-file"\nlisten = "127.0.0.1:7400"\nredis = "redis://127.0.0.1:6379"\ninterval = 600\nric-interval = 300\nhb-timeout = 900\ngate = false\n',
  );
  const env = { MIGSAFE_INTERVAL: '500', MIGSAFE_HB_TIMEOUT: '800', MIGSAFE_QEMU_PREFIX: '/opt/q', MIGSAFE_PIDFILE: '/tmp/p' };
  const a = await withEnv(env, async () => {
    const a = await parseArgs(agent, ['agent', '--config', cfg, '--interval', '400']);
    t.equal(process.env.MIGSAFE_QEMU_PREFIX, '/opt/q', 'a variable that is no option was put back after the parse');
    return a;
  });
  t.equal(a.interval, 400, 'command line over environment');
  t.equal(a['hb-timeout'], 800, 'environment over config file');
  t.equal(a['ric-interval'], 300, 'config file [agent] table over default');
  t.equal(a['max-pages'], 11, 'config file top level over default');
  t.equal(a.gate, false, 'a boolean from the file');
  t.equal(a.host, 'from-file', 'a required option satisfied by the file');
  t.equal(a['hb-interval'], 200, 'default where nobody says anything');

  const b = await withEnv(env, () => parseArgs(agent, ['agent', '--config', cfg]));
  t.equal(b.interval, 500, 'without the command line: the environment');
  const c = await withEnv({ ...env, MIGSAFE_INTERVAL: undefined }, () => parseArgs(agent, ['agent', '--config', cfg]));
  t.equal(c.interval, 600, 'without the environment: the file');
  const d = await withEnv({ MIGSAFE_INTERVAL: undefined, MIGSAFE_HB_TIMEOUT: undefined }, () =>
    parseArgs(agent, ['agent', '--host', 'h', '--listen', '127.0.0.1:1', '--redis', 'redis://127.0.0.1:1']),
  );
  t.equal(d.interval, 1000, 'without any: the default');
  const e = await withEnv({ MIGSAFE_CONFIG: cfg, MIGSAFE_INTERVAL: undefined }, () => parseArgs(agent, ['agent']));
  t.equal(e.host, 'from-file', 'MIGSAFE_CONFIG names the file');

  // `config check` shows the same values and says where they come from.
  const shown = await withEnv(env, async () => effective(registry(), 'agent', readConfigFile(cfg, registry())));
  t.same(shown.interval, { value: 500, from: 'env MIGSAFE_INTERVAL' });
  t.same(shown['hb-timeout'], { value: 800, from: 'env MIGSAFE_HB_TIMEOUT' });
  t.same(shown['ric-interval'], { value: 300, from: `config ${cfg} [agent]` });
  t.same(shown['max-pages'], { value: 11, from: `config ${cfg}` });
  t.same(shown['hb-interval'], { value: 200, from: 'default' });
  for (const k of ['ric-interval', 'max-pages', 'hb-interval', 'hb-timeout', 'gate', 'host']) t.same(shown[k]!.value, b[k], `config check agrees with the parser on ${k}`);
});

t.test('a config file or variable with a wrong value stops the command, naming it', async (t) => {
  const base = ['agent', '--host', 'h', '--listen', '127.0.0.1:1', '--redis', 'redis://127.0.0.1:1'];
  await t.rejects(withEnv({ MIGSAFE_GATE: '1' }, () => parseArgs(agent, base)), /environment variable MIGSAFE_GATE="1": --gate takes true or false/);
  await t.rejects(withEnv({ MIGSAFE_RIC_INTERVAL: 'fast' }, () => parseArgs(agent, base)), /MIGSAFE_RIC_INTERVAL="fast": --ric-interval takes a number/);
  await t.rejects(withEnv({ MIGSAFE_DIRTY_SOURCE: 'x' }, () => parseArgs(agent, base)), /--dirty-source takes one of auto, bitmap, scan/);
  await t.rejects(parseArgs(agent, [...base, '--config', file('[agent]\nric-intervl = 5\n')]), /unknown key "ric-intervl" in \[agent\]: did you mean "ric-interval"/);
  // yargs' own checks still apply to values from a file.
  await t.rejects(parseArgs(agent, [...base, '--config', file('durability = "sometimes"\n')]), /durability/);
  const ok = await withEnv({ MIGSAFE_GATE: 'false', MIGSAFE_DEBUG: '1' }, () => parseArgs(agent, base));
  t.equal(ok.gate, false, 'MIGSAFE_GATE=false');
});

t.test('a number option given something else is refused, naming it (yargs would pass NaN on)', async (t) => {
  const base = ['agent', '--host', 'h', '--listen', '127.0.0.1:1', '--redis', 'redis://127.0.0.1:1'];
  await t.rejects(parseArgs(agent, [...base, '--hb-interval', 'abc']), /--hb-interval abc: give a whole number from 10 to \d+ \(ms\), e\.g\. --hb-interval 200/);
  const a = await parseArgs(agent, [...base, '--hb-interval', '150']);
  t.equal(a['hb-interval'], 150, 'a number still passes');
});
