// The systemd units and their install script: installed under a scratch root, checked with
// `systemd-analyze verify` (the script fails on any warning), the example config checked too.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readConfigFile } from '../../src/cli/config-file.js';
import { registry } from '../../src/cli/commands/index.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const MAIN = join(ROOT, 'dist', 'src', 'cli', 'main.js');
const BIN = `${process.execPath} ${MAIN}`;
const hasAnalyze = spawnSync('sh', ['-c', 'command -v systemd-analyze']).status === 0;

function install(scriptRoot: string, dest: string) {
  const env = { ...process.env };
  delete env.MIGSAFE_CONFIG;
  return spawnSync('bash', [join(scriptRoot, 'scripts', 'install-systemd.sh'), '--root', dest, '--bin', BIN], { encoding: 'utf8', env });
}

t.test('the example config is a valid config file', async (t) => {
  const f = readConfigFile(join(ROOT, 'packaging', 'migsafe.example.toml'), registry());
  t.equal(f.tables.agent?.host, 'host-a');
  t.equal(f.tables.run?.vm, 'web1');
});

t.test('install-systemd.sh installs the units and the example, and systemd-analyze verifies them', { skip: hasAnalyze ? false : 'systemd-analyze is not installed here (package systemd)' }, async (t) => {
  const dest = mkdtempSync(join(tmpdir(), 'migsafe-systemd-'));
  t.teardown(() => rmSync(dest, { recursive: true, force: true }));
  const r = install(ROOT, dest);
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /systemd-analyze verify: OK/);
  const agent = readFileSync(join(dest, 'etc/systemd/system/migsafe-agent@.service'), 'utf8');
  t.match(agent, `ExecStart=${BIN} agent --config /etc/migsafe/%i.toml -- $QEMU_ARGV`, 'ExecStart runs this migsafe on the instance config');
  t.match(agent, /^ExecReload=\/bin\/kill -HUP \$MAINPID$/m, 'reload is SIGHUP');
  t.match(agent, /^KillMode=mixed$/m, 'SIGTERM goes to the agent only: it quits QEMU itself');
  t.match(agent, /^ProtectSystem=strict$/m);
  t.notMatch(agent, /^PrivateDevices=/m, 'no PrivateDevices: QEMU needs /dev/kvm');
  t.match(readFileSync(join(dest, 'etc/migsafe/example.toml'), 'utf8'), /\[agent\]/);
  const again = install(ROOT, dest);
  t.match(again.stdout, /kept .*example\.toml \(exists\)/, 'an installed config is never overwritten');
});

t.test('a misspelt directive fails the install (systemd-analyze only warns about it)', { skip: hasAnalyze ? false : 'systemd-analyze is not installed here (package systemd)' }, async (t) => {
  const tree = mkdtempSync(join(tmpdir(), 'migsafe-systemd-tree-'));
  const dest = mkdtempSync(join(tmpdir(), 'migsafe-systemd-'));
  t.teardown(() => {
    rmSync(tree, { recursive: true, force: true });
    rmSync(dest, { recursive: true, force: true });
  });
  cpSync(join(ROOT, 'scripts'), join(tree, 'scripts'), { recursive: true });
  cpSync(join(ROOT, 'packaging'), join(tree, 'packaging'), { recursive: true });
  const unit = join(tree, 'packaging/systemd/migsafe-agent@.service');
  writeFileSync(unit, readFileSync(unit, 'utf8').replace('ProtectHome=yes', 'ProtectHom=yes'));
  const r = install(tree, dest);
  t.equal(r.status, 1);
  t.match(r.stderr, /Unknown key '?ProtectHom'? in section \[Service\]/);
});
