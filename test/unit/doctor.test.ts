// `migsafe doctor`'s verdicts (src/cli/doctor-checks.ts): each probe result → ok / warn / FAIL
// and the fix it names; the probes themselves run in test/e2e/doctor.test.ts.
import t from 'tap';
import {
  dirVerdict,
  durabilityVerdict,
  exitCode,
  formatChecks,
  kvmVerdict,
  qemuVerdict,
  redisServerVerdict,
  redisVerdict,
  uffdVerdict,
} from '../../src/cli/doctor-checks.js';
import { parseDurability } from '../../src/store/durability.js';

const V72 = 'QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)';

t.test('qemu: missing, broken, old, stock, patched', async (t) => {
  const missing = qemuVerdict({ binary: 'qemu-system-x86_64', hasFt: false });
  t.equal(missing.status, 'FAIL');
  t.match(missing.fix, /apt-get install qemu-system-x86.*--qemu-binary/);
  t.equal(qemuVerdict({ binary: 'q', path: '/x/q', hasFt: false, error: 'exit 1' }).status, 'FAIL');
  const old = qemuVerdict({ binary: 'q', path: '/x/q', version: 'QEMU emulator version 5.2.0', hasFt: false });
  t.equal(old.status, 'warn');
  t.match(old.message, /5\.2\.0, older than the 7\.2/);
  const stock = qemuVerdict({ binary: 'q', path: '/usr/bin/q', version: V72, hasFt: false });
  t.equal(stock.status, 'warn');
  t.match(stock.message, /7\.2\.22, stock/);
  t.match(stock.fix, /qemu-patches\/build\.sh/);
  const built = qemuVerdict({ binary: 'q', path: '/usr/bin/q', version: V72, hasFt: false, patchedAt: '/r/.cache/qemu/bin/qemu-system-x86_64' });
  t.match(built.fix, /--qemu-binary \/r\/\.cache\/qemu\/bin\/qemu-system-x86_64/, 'a patched build already there is named');
  const patched = qemuVerdict({ binary: 'q', path: '/p/q', version: 'QEMU emulator version 8.1.2', hasFt: true });
  t.equal(patched.status, 'ok');
  t.match(patched.message, /8\.1\.2, patched/);
});

t.test('kvm: absent, not openable, refusing VMs, usable', async (t) => {
  const none = kvmVerdict({ exists: false, uid: 1000 });
  t.equal(none.status, 'warn', 'no KVM is a warning: TCG works');
  t.match(none.message, /TCG/);
  const denied = kvmVerdict({ exists: true, openError: 'EACCES', uid: 1000 });
  t.equal(denied.status, 'warn');
  t.match(denied.message, /uid 1000 \(EACCES\).*TCG/);
  t.match(denied.fix, /group kvm/);
  const noVm = kvmVerdict({ exists: true, createVm: 'Operation not supported', uid: 0 });
  t.equal(noVm.status, 'warn');
  t.match(noVm.message, /creating a VM fails \(Operation not supported\)/);
  t.equal(kvmVerdict({ exists: true, createVm: 'ok', uid: 0 }).status, 'ok');
  t.equal(kvmVerdict({ exists: true, uid: 0 }).status, 'ok', 'opened, VM creation not probed');
});

t.test('redis: unreachable names the URL and the fix; own server not running is fine', async (t) => {
  const down = redisVerdict({ url: 'redis://10.0.0.3:6379', own: false, reachable: false, error: 'connect ECONNREFUSED 10.0.0.3:6379' });
  t.equal(down.status, 'FAIL');
  t.match(down.message, /cannot reach Redis at redis:\/\/10\.0\.0\.3:6379: connect ECONNREFUSED/);
  t.match(down.fix, /start the server there, or check --redis/);
  t.equal(redisVerdict({ url: '/s/redis.sock', own: true, running: false, reachable: false }).status, 'ok');
  const ownDead = redisVerdict({ url: '/s/redis/redis.sock', own: true, running: true, reachable: false, error: 'x' });
  t.equal(ownDead.status, 'FAIL');
  t.match(ownDead.fix, /kill \$\(cat \/s\/redis\/redis\.pid\)/);
  const noauth = redisVerdict({ url: 'redis://h:1', own: false, reachable: false, error: 'NOAUTH Authentication required.' });
  t.match(noauth.fix, /--redis-password-file FILE or MIGSAFE_REDIS_PASSWORD/, 'a store that wants a password: how to give it');
  const tls = redisVerdict({ url: 'rediss://h:1', own: false, reachable: false, error: 'self-signed certificate in certificate chain' });
  t.match(tls.fix, /--redis-ca FILE, and --redis-cert FILE --redis-key FILE/);
  const up = redisVerdict({ url: 'redis://h:1', own: false, reachable: true, version: '7.0.15', role: 'master' });
  t.equal(up.status, 'ok');
  t.match(up.message, /Redis 7\.0\.15 at redis:\/\/h:1 \(master\)/);
});

t.test('durability against the server', async (t) => {
  const p = (spec: string) => ({ spec, choice: parseDurability(spec) });
  t.equal(durabilityVerdict({ ...p('auto'), own: true }).status, 'ok', 'own server: fsync');
  const ownReplicas = durabilityVerdict({ ...p('replicas:1'), own: true });
  t.equal(ownReplicas.status, 'FAIL');
  t.match(ownReplicas.message, /own redis-server, which has no replicas/);
  const refused = durabilityVerdict({ ...p('fsync'), own: false, error: '--durability fsync: Redis at redis://h:1 has appendonly no and appendfsync everysec, ...' });
  t.equal(refused.status, 'FAIL');
  t.match(refused.fix, /appendfsync always/);
  const auto = durabilityVerdict({ ...p('auto'), own: false, settled: { kind: 'none' } });
  t.equal(auto.status, 'warn', 'auto falling back to none is said');
  t.match(auto.message, /auto settles to none/);
  t.equal(durabilityVerdict({ ...p('none'), own: false, settled: { kind: 'none' } }).status, 'ok', 'none chosen is ok');
  t.equal(durabilityVerdict({ ...p('fsync'), own: false, settled: { kind: 'fsync' } }).status, 'ok');
  const few = durabilityVerdict({ ...p('replicas:2'), own: false, settled: { kind: 'replicas', replicas: 2, timeoutMs: 1000 }, replicas: 1 });
  t.equal(few.status, 'FAIL');
  t.match(few.message, /1 replica\(s\) connected, fewer than 2/);
  t.equal(durabilityVerdict({ ...p('replicas:1'), own: false, settled: { kind: 'replicas', replicas: 1, timeoutMs: 1000 }, replicas: 1 }).status, 'ok');
});

t.test('redis-server binary', async (t) => {
  const none = redisServerVerdict(undefined);
  t.equal(none.status, 'FAIL');
  t.match(none.fix, /apt-get install redis-server, or give --redis/);
  t.equal(redisServerVerdict('/usr/bin/redis-server').status, 'ok');
});

t.test('userfaultfd', async (t) => {
  const base = { devExists: false, devAccess: false, root: false, uid: 1000 };
  t.equal(uffdVerdict({ ...base, syscall: 'ok', unprivileged: '0', root: true }).status, 'ok');
  const eperm = uffdVerdict({ ...base, syscall: 'EPERM', unprivileged: '0', devExists: true });
  t.equal(eperm.status, 'warn');
  t.match(eperm.message, /refused to uid 1000 \(EPERM, vm\.unprivileged_userfaultfd = 0\): post-copy/);
  t.match(eperm.fix, /sysctl -w vm\.unprivileged_userfaultfd=1.*\/dev\/userfaultfd/);
  const nosys = uffdVerdict({ ...base, syscall: 'ENOSYS' });
  t.match(nosys.fix, /--mode precopy/);
  t.equal(uffdVerdict({ ...base, unprivileged: '1' }).status, 'ok', 'not probed, sysctl allows it');
  t.equal(uffdVerdict({ ...base, unprivileged: '0' }).status, 'warn', 'not probed, sysctl forbids it');
});

t.test('directories', async (t) => {
  const uid = 1000;
  t.equal(dirVerdict('state', { path: '/s', exists: false, creatable: true, uid }).status, 'ok');
  const cannot = dirVerdict('state', { path: '/s', exists: false, creatable: false, uid });
  t.equal(cannot.status, 'FAIL');
  t.match(cannot.fix, /--state-dir DIR/);
  t.equal(dirVerdict('run', { path: '/r', exists: true, isDir: false, uid }).status, 'FAIL');
  const ro = dirVerdict('run', { path: '/r', exists: true, isDir: true, writable: false, owner: uid, mode: 0o40700, uid });
  t.equal(ro.status, 'FAIL');
  t.match(ro.fix, /--run-dir DIR/);
  const other = dirVerdict('run', { path: '/r', exists: true, isDir: true, writable: true, owner: 0, mode: 0o40700, tmpfs: true, uid });
  t.equal(other.status, 'warn');
  t.match(other.message, /owned by uid 0/);
  const open = dirVerdict('run', { path: '/r', exists: true, isDir: true, writable: true, owner: uid, mode: 0o40755, tmpfs: true, uid });
  t.equal(open.status, 'warn');
  t.match(open.message, /mode 755: other users can reach guest RAM files/);
  t.match(open.fix, /chmod 700 \/r/);
  const disk = dirVerdict('run', { path: '/r', exists: true, isDir: true, writable: true, owner: uid, mode: 0o40700, tmpfs: false, uid });
  t.equal(disk.status, 'warn');
  t.match(disk.fix, /\/dev\/shm/);
  t.equal(dirVerdict('state', { path: '/s', exists: true, isDir: true, writable: true, owner: uid, mode: 0o40700, tmpfs: false, uid }).status, 'ok', 'the state dir may be on disk');
});

t.test('exit code and lines', async (t) => {
  const good = [kvmVerdict({ exists: false, uid: 0 })];
  t.equal(exitCode(good), 0, 'a warning is no failure');
  const bad = [...good, redisServerVerdict(undefined)];
  t.equal(exitCode(bad), 1);
  const text = formatChecks(bad);
  t.match(text, /^warn  kvm           no \/dev\/kvm/m);
  t.match(text, /^FAIL  redis-server  redis-server not found.* — fix: apt-get install redis-server/m);
  t.match(text, /1 check\(s\) failed, 1 warning\(s\)\n$/);
});
