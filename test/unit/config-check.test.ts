// `migsafe config check` as an operator runs it: a real process, its output and exit status.
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from '../helpers/cli.js';

const dir = mkdtempSync(join(tmpdir(), 'migsafe-config-check-'));
const good = join(dir, 'host-a.toml');
writeFileSync(good, 'redis = "redis://10.0.0.3:6379"\ninterval = 700\n\n[agent]\nhost = "host-a"\nlisten = "10.0.0.1:7400"\nric-interval = 300\n');
const env = (extra: Record<string, string> = {}) => {
  const e: NodeJS.ProcessEnv = { ...process.env, ...extra };
  for (const k of Object.keys(e)) if (k.startsWith('MIGSAFE_') && !(k in extra)) delete e[k];
  return e;
};

t.test('a good file: OK, and what each command gets from where', async (t) => {
  const r = await runCli(['config', 'check', '--config', good], env({ MIGSAFE_HB_TIMEOUT: '900', MIGSAFE_TYPO: '1' }));
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, `${good}: OK`);
  t.match(r.stdout, /agent:\n(.*\n)*  hb-timeout\s+900\s+env MIGSAFE_HB_TIMEOUT/);
  t.match(r.stdout, new RegExp(`  ric-interval\\s+300\\s+config ${good} \\[agent\\]`));
  t.match(r.stdout, /run:\n  interval\s+700\s+config .*\n  redis\s+"redis:\/\/10\.0\.0\.3:6379"/, 'top-level keys reach run too');
  t.match(r.stdout, /MIGSAFE_\* variables that are not options \(left alone\): MIGSAFE_TYPO/);
});

t.test('--command NAME --json: every option of that command, with its source', async (t) => {
  const r = await runCli(['config', 'check', '--command', 'agent', '--json'], env({ MIGSAFE_CONFIG: good, MIGSAFE_INTERVAL: '250' }));
  t.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as { ok: boolean; file: string; commands: Record<string, Record<string, { value: unknown; from: string }>> };
  t.equal(j.ok, true);
  t.equal(j.file, good, 'MIGSAFE_CONFIG names the file');
  t.same(Object.keys(j.commands), ['agent']);
  t.same(j.commands.agent!.interval, { value: 250, from: 'env MIGSAFE_INTERVAL' }, 'environment over the file');
  t.same(j.commands.agent!.host, { value: 'host-a', from: `config ${good} [agent]` });
  t.same(j.commands.agent!['hb-interval'], { value: 200, from: 'default' });
  t.same(j.commands.agent!.vm, { from: 'unset' }, 'an option nobody sets is listed as unset');
});

t.test('a bad file: exit 2, naming the file, the key and the fix', async (t) => {
  const bad = join(dir, 'bad.toml');
  writeFileSync(bad, '[agent]\nric-intervall = 300\n');
  const r = await runCli(['config', 'check', '--config', bad], env());
  t.equal(r.code, 2);
  t.match(r.stderr, `${bad}: unknown key "ric-intervall" in [agent]: did you mean "ric-interval"?`);
  const typed = join(dir, 'typed.json');
  writeFileSync(typed, '{"agent": {"gate": "yes"}}');
  const r2 = await runCli(['config', 'check', '--config', typed], env());
  t.equal(r2.code, 2);
  t.match(r2.stderr, `${typed}: [agent] gate is string "yes", but it takes true or false without quotes`);
  const r3 = await runCli(['config', 'check', '--command', 'agnet'], env());
  t.equal(r3.code, 2);
  t.match(r3.stderr, /--command agnet: no such command; one of run, attach/);
  const r4 = await runCli(['config', 'check'], env({ MIGSAFE_GATE: 'yes' }));
  t.equal(r4.code, 2, 'a variable of the wrong type is an error too');
  t.match(r4.stderr, /MIGSAFE_GATE="yes": --gate takes true or false/);
});
