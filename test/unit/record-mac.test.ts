// A VM record signed with --record-key (src/store/record-mac.ts), against a real redis-server:
// written signed, it verifies; changed in the store (argv, cwd, RAM size), copied to another VM
// id, written without the key, or read with another key, it is refused by a reader holding the
// key — and `vm({ verify: false })` says how it stands. The key file's checks (cli/record-key.ts).
import t from 'tap';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CheckpointStore } from '../../src/store/checkpoint-store.js';
import { vmKeys } from '../../src/store/keys.js';
import { checkRecordMac, recordMac } from '../../src/store/record-mac.js';
import { recordKeyFrom } from '../../src/cli/record-key.js';
import { testClient, testRedis } from '../helpers/redis.js';

const KEY = Buffer.from('k'.repeat(64));
const ARGV = ['qemu-system-x86_64', '-m', '64M', '-accel', 'tcg'];

t.test('the signature covers what recovery starts QEMU from, bound to the VM id', async (t) => {
  const f = { format: 3, argv: ARGV, cwd: '/srv', ramBytes: 64 << 20 };
  const mac = recordMac(KEY, 'a', f);
  t.equal(checkRecordMac(KEY, 'a', f, mac), 'verified');
  t.equal(checkRecordMac(KEY, 'b', f, mac), 'mismatch', 'another VM id');
  t.equal(checkRecordMac(Buffer.from('x'.repeat(64)), 'a', f, mac), 'mismatch', 'another key');
  t.equal(checkRecordMac(KEY, 'a', { ...f, argv: [...ARGV, '-S'] }, mac), 'mismatch', 'one more argument');
  t.equal(checkRecordMac(KEY, 'a', { ...f, argv: ['qemu-system-x86_64 -m', '64M', '-accel', 'tcg'] }, mac), 'mismatch', 'arguments joined differently');
  t.equal(checkRecordMac(KEY, 'a', { ...f, cwd: '/tmp' }, mac), 'mismatch', 'another directory');
  t.equal(checkRecordMac(KEY, 'a', { ...f, libvirt: { uri: 'qemu:///system', domain: 'd', xml: '<domain/>' } }, mac), 'mismatch', 'a libvirt domain added');
  t.equal(checkRecordMac(KEY, 'a', f, undefined), 'unsigned');
  t.equal(checkRecordMac(KEY, 'a', f, 'zz' + mac.slice(2)), 'mismatch', 'not hex');
  t.equal(checkRecordMac(KEY, 'a', f, mac.slice(0, 62)), 'mismatch', 'short');
});

t.test('through the store: signed records verify, changed ones are refused', async (t) => {
  const srv = await testRedis(t);
  const redis = testClient(t, srv.url);
  const signed = new CheckpointStore(redis, 'vm1');
  signed.signRecordsWith(KEY);
  await signed.init(ARGV, 64 << 20, '/srv');
  t.equal((await signed.vm())?.signature, 'verified', 'written with the key, read with it');
  t.equal((await new CheckpointStore(redis, 'vm1').vm())?.signature, undefined, 'a reader without the key checks nothing');

  const key = vmKeys('vm1').vm;
  const good = await redis.hget(key, 'argv');
  await redis.hset(key, 'argv', JSON.stringify(['/bin/sh', '-c', 'touch /tmp/owned']));
  await t.rejects(signed.vm(), /VM "vm1": its record in the store does not match its signature under --record-key: .*nothing was started/, 'argv changed in the store');
  t.equal((await signed.vm({ verify: false }))?.signature, 'mismatch', 'and says so when asked not to verify');
  await redis.hset(key, 'argv', good!);
  await redis.hset(key, 'ramBytes', String(128 << 20));
  await t.rejects(signed.vm(), /does not match its signature/, 'RAM size changed');
  await redis.hset(key, 'ramBytes', String(64 << 20));
  t.equal((await signed.vm())?.signature, 'verified', 'put back, it verifies again');

  // The same fields under another VM id: the signature is bound to the id.
  const copy = await redis.hgetall(key);
  await redis.hset(vmKeys('vm2').vm, copy);
  const other = new CheckpointStore(redis, 'vm2');
  other.signRecordsWith(KEY);
  await t.rejects(other.vm(), /VM "vm2": its record .* does not match/, 'a record copied to another VM id');

  const another = new CheckpointStore(redis, 'vm1');
  another.signRecordsWith(Buffer.from('y'.repeat(40)));
  await t.rejects(another.vm(), /does not match/, 'read with another key');

  // Written again without the key: unsigned (the old signature is removed, not left stale).
  await new CheckpointStore(redis, 'vm1').init(ARGV, 64 << 20, '/srv');
  t.equal(await redis.hget(key, 'recordMac'), null, 'a writer without the key removes the signature');
  await t.rejects(signed.vm(), /VM "vm1": its record in the store is not signed .* Sign it by running or attaching the VM with --record-key/);
  // A writer with the key signs what it runs, whatever the record was.
  await signed.init(ARGV, 64 << 20, '/srv');
  t.equal((await signed.vm())?.signature, 'verified', 'signed again by a writer holding the key');
});

t.test('the key file: private, long enough', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-rkey-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'key');
  writeFileSync(file, `${'a'.repeat(64)}\n`, { mode: 0o600 });
  t.equal(recordKeyFrom({ 'record-key': file })?.toString(), 'a'.repeat(64), 'its first line');
  t.equal(recordKeyFrom({}), undefined, 'none given');
  chmodSync(file, 0o644);
  t.throws(() => recordKeyFrom({ 'record-key': file }), /--record-key .*: other users can read or write it \(mode 644\): `chmod 600/);
  writeFileSync(file, 'short\n', { mode: 0o600 });
  chmodSync(file, 0o600);
  t.throws(() => recordKeyFrom({ 'record-key': file }), /--record-key .*: its key is 5 bytes, too short to sign with: put 32 bytes or more .*openssl rand -hex 32/);
  writeFileSync(file, '\n');
  t.throws(() => recordKeyFrom({ 'record-key': file }), /its first line is empty: put the key there/);
  t.throws(() => recordKeyFrom({ 'record-key': join(dir, 'none') }), /--record-key .*none: cannot read it \(ENOENT\): give a file holding the key/);
});
