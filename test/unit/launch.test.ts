// QEMU command-line handling: RAM size, refusing what migsafe adds itself, attach → recover.
import t from 'tap';
import { checkUserArgv, qemuArgv, ramBytesFromArgv, reusableArgv, vmPaths } from '../../src/qemu/launch.js';

t.test('RAM size from -m', async (t) => {
  t.equal(ramBytesFromArgv(['qemu', '-m', '256']), 256 * 2 ** 20);
  t.equal(ramBytesFromArgv(['qemu', '-m', '256M']), 256 * 2 ** 20);
  t.equal(ramBytesFromArgv(['qemu', '-m', '1G']), 2 ** 30);
  t.equal(ramBytesFromArgv(['qemu', '-m', 'size=512M,slots=2,maxmem=4G']), 512 * 2 ** 20);
  t.equal(ramBytesFromArgv(['qemu']), 128 * 2 ** 20, 'QEMU default');
  t.throws(() => ramBytesFromArgv(['qemu', '-m', 'lots']), /cannot read the guest RAM size/);
});

t.test('refuses what migsafe adds itself', async (t) => {
  t.throws(() => checkUserArgv([]), /no QEMU command line/);
  t.throws(() => checkUserArgv(['qemu', '-machine', 'pc,memory-backend=m']), /memory-backend/);
  t.throws(() => checkUserArgv(['qemu', '-qmp', 'stdio']), /-qmp/);
  t.doesNotThrow(() => checkUserArgv(['qemu', '-m', '256M']));
});

t.test('full argv puts RAM in the shared file', async (t) => {
  const paths = vmPaths('/run/x', 'vm1');
  const a = qemuArgv({ argv: ['qemu-system-x86_64', '-m', '256M'], ramBytes: 256 * 2 ** 20, paths });
  t.equal(a[0], 'qemu-system-x86_64');
  t.ok(a.includes(`memory-backend-file,id=migsafe-ram,size=${256 * 2 ** 20},mem-path=/run/x/vm1.ram,share=on`));
  t.notOk(a.includes('-incoming'));
  const r = qemuArgv({ argv: ['q'], ramBytes: 4096, paths, incoming: true });
  t.same(r.slice(-6), ['-machine', 'suppress-vmdesc=on', '-global', 'migration.send-configuration=off', '-incoming', 'defer']);
});

t.test('attach: the recorded command line loses its own RAM backend and QMP', async (t) => {
  const argv = [
    'qemu-system-x86_64', '-m', '256M',
    '-object', 'memory-backend-file,id=mem,size=256M,mem-path=/dev/shm/vm,share=on',
    '-machine', 'pc,memory-backend=mem', '-qmp', 'unix:/tmp/q.sock,server=on,wait=off', '-display', 'none',
  ];
  t.same(reusableArgv(argv), ['qemu-system-x86_64', '-m', '256M', '-machine', 'pc', '-display', 'none']);
});
