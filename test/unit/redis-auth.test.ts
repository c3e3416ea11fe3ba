// Redis credentials from files, the environment and config files: what is read, what is refused
// (a password on the command line, a password file others can read, a password given twice, TLS
// files for a URL that is not rediss://), through the real parser as main.ts runs it.
import t from 'tap';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { commands } from '../../src/cli/commands/index.js';
import { commandName } from '../../src/cli/config-file.js';
import { parseArgs } from '../../src/cli/parser.js';
import { redisAuthFrom, readSecretFile, type RedisAuthArgs } from '../../src/cli/redis-auth.js';
import { maskedCommandLine, refuseSecretArgs } from '../../src/cli/hardening.js';

const dir = mkdtempSync(join(tmpdir(), 'migsafe-auth-test-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const inspect = commands.find((c) => commandName(c) === 'inspect')!;

function secret(name: string, text: string, mode = 0o600): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  chmodSync(p, mode);
  return p;
}

t.test('a password file: its first line; refused when others can read it, or empty', async (t) => {
  t.equal(readSecretFile(secret('pw', 's3cret\nignored\n'), 'redis-password-file'), 's3cret');
  const open = secret('open', 's3cret\n', 0o644);
  t.throws(() => readSecretFile(open, 'redis-password-file'), new RegExp(`other users can read or write it \\(mode 644\\): \`chmod 600 ${open}\``));
  t.throws(() => readSecretFile(secret('empty', '\n'), 'redis-password-file'), /first line is empty/);
  t.throws(() => readSecretFile(join(dir, 'none'), 'redis-password-file'), /cannot read it \(ENOENT\)/);
});

t.test('options become RedisAuth, checked against the URL', async (t) => {
  const pw = secret('pw2', 'filepw\n');
  const a = (o: RedisAuthArgs) => redisAuthFrom(o);
  t.equal(a({ redis: 'redis://h:1' }), undefined, 'nothing set: no auth');
  t.same(a({ redis: 'redis://h:1', 'redis-user': 'app', 'redis-password-file': pw }), { username: 'app', password: 'filepw' });
  t.same(a({ redis: 'redis://h:1', 'redis-password': 'envpw' }), { password: 'envpw' });
  t.throws(() => a({ redis: 'redis://:urlpw@h:1', 'redis-password-file': pw }), /the Redis password is given twice \(the --redis URL and --redis-password-file\): give it one way/);
  t.throws(() => a({ redis: 'redis://h:1', 'redis-password-file': pw, 'redis-password': 'x' }), /given twice/);
  t.throws(() => a({ redis: 'redis://bob:x@h:1', 'redis-user': 'app' }), /--redis-user app and the user in the --redis URL \(bob\) differ/);
  t.throws(() => a({ redis: 'redis://h:1', 'redis-ca': pw }), /--redis-ca is for TLS: use a rediss:\/\/HOST:PORT URL/);
  t.throws(() => a({ redis: 'rediss://h:1', 'redis-cert': pw }), /--redis-cert and --redis-key go together/);
  t.throws(() => a({ 'redis-password': 'x' }), /there is no --redis: migsafe's own redis-server needs no credentials; .*MIGSAFE_REDIS_PASSWORD/);
  const pem = '-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n';
  t.same(a({ redis: 'rediss://h:1', 'redis-ca': secret('ca.pem', pem) }), { tls: { ca: Buffer.from(pem) } });
  t.throws(() => a({ redis: 'rediss://h:1', 'redis-ca': pw }), /--redis-ca .*pw2: not a PEM file \(no -----BEGIN line\): give a PEM file/);
  t.throws(() => a({ redis: 'rediss://h:1', 'redis-ca': dir }), /--redis-ca .*: not a file \(a directory\): give a PEM file/);
});

t.test('MIGSAFE_REDIS_PASSWORD and a config-file key set --redis-password; the command line may not', async (t) => {
  process.env.MIGSAFE_REDIS_PASSWORD = 'fromenv';
  try {
    const got = await parseArgs(inspect, ['inspect', '--vm', 'v', '--redis', 'redis://h:1']);
    t.equal(got['redis-password'], 'fromenv');
  } finally {
    delete process.env.MIGSAFE_REDIS_PASSWORD;
  }
  const cfg = join(dir, 'c.toml');
  writeFileSync(cfg, 'redis = "redis://h:1"\nredis-password = "fromfile"\nredis-user = "app"\n');
  const got = await parseArgs(inspect, ['inspect', '--vm', 'v', '--config', cfg]);
  t.equal(got['redis-password'], 'fromfile');
  t.equal(got['redis-user'], 'app');
  t.throws(() => refuseSecretArgs(['inspect', '--redis-password', 'x']), /--redis-password is refused on the command line, where `ps` shows it .*--redis-password-file FILE.*MIGSAFE_REDIS_PASSWORD/);
  t.throws(() => refuseSecretArgs(['inspect', '--redis-password=x']), /refused on the command line/);
  t.doesNotThrow(() => refuseSecretArgs(['run', '--vm', 'v', '--', 'qemu', '--redis-password', 'x']), "QEMU's argv is not ours");
});

t.test('the process title: a password in argv masked, otherwise untouched', async (t) => {
  t.equal(maskedCommandLine(['inspect', '--vm', 'v']), undefined);
  const m = maskedCommandLine(['inspect', '--redis', 'redis://app:hunter2@h:1']);
  t.ok(m && m.endsWith('inspect --redis redis://app:***@h:1') && !m.includes('hunter2'), m ?? 'undefined');
});
