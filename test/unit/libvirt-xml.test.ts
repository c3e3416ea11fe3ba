// The domain-XML helpers of attach --domain and its recovery (src/qemu/libvirt.ts), on XML as
// `virsh dumpxml --migratable` prints it (libvirt 9.0).
import t from 'tap';
import {
  INCOMING_ARGS,
  ftSocketOf,
  qemuCommandline,
  qmpProblem,
  qmpSocketOf,
  sharedFileMemoryProblem,
  withEmulator,
  withQemuCommandline,
  withoutIncomingArgs,
} from '../../src/qemu/libvirt.js';

const XML = `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>g1</name>
  <memoryBacking>
    <source type='file'/>
    <access mode='shared'/>
  </memoryBacking>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-qmp'/>
    <qemu:arg value='unix:/var/lib/libvirt/qemu/g1.qmp,server=on,wait=off'/>
    <qemu:arg value='-object'/>
    <qemu:arg value='migsafe-ft,id=ft0,path=/run/ft &amp; co.sock'/>
  </qemu:commandline>
</domain>
`;

t.test('reads the <qemu:commandline>: the QMP and migsafe-ft sockets', async (t) => {
  const args = qemuCommandline(XML);
  t.same(args, ['-qmp', 'unix:/var/lib/libvirt/qemu/g1.qmp,server=on,wait=off', '-object', 'migsafe-ft,id=ft0,path=/run/ft & co.sock']);
  t.equal(qmpSocketOf(args), '/var/lib/libvirt/qemu/g1.qmp');
  t.equal(ftSocketOf(args), '/run/ft & co.sock', 'XML entities undone');
  t.equal(qmpSocketOf(['-qmp', 'tcp:127.0.0.1:4444']), undefined, 'only a unix socket');
});

t.test('recovery adds -incoming defer, attach of a recovered domain takes it out again', async (t) => {
  const args = qemuCommandline(XML);
  const rec = withQemuCommandline(XML, [...args, ...INCOMING_ARGS]);
  t.same(qemuCommandline(rec), [...args, ...INCOMING_ARGS]);
  t.equal((rec.match(/<qemu:commandline>/g) ?? []).length, 1, 'one block');
  t.match(rec, /&amp; co\.sock/, 'values escaped again');
  t.same(withoutIncomingArgs(qemuCommandline(rec)), args);
  t.same(withoutIncomingArgs(['-incoming', 'defer']), ['-incoming', 'defer'], 'only the whole run migsafe adds');
  const none = withQemuCommandline(XML, []);
  t.notMatch(none, /qemu:commandline/);
  const bare = withQemuCommandline("<domain type='qemu'>\n  <name>x</name>\n</domain>\n", ['-qmp', 'unix:/s']);
  t.match(bare, /<domain xmlns:qemu='http:\/\/libvirt.org\/schemas\/domain\/qemu\/1.0' type='qemu'>/, 'the namespace is declared');
  t.match(withEmulator(XML, '/opt/q/bin/qemu'), /<emulator>\/opt\/q\/bin\/qemu<\/emulator>/);
});

t.test('says what the XML lacks', async (t) => {
  t.equal(sharedFileMemoryProblem(XML), undefined);
  t.match(sharedFileMemoryProblem(XML.replace(/<access mode='shared'\/>/, '')), /add <memoryBacking><source type='file'\/><access mode='shared'\/><\/memoryBacking>/);
  t.match(sharedFileMemoryProblem("<domain><memoryBacking><hugepages/></memoryBacking></domain>"), /no shared file memory backing/);
  t.match(qmpProblem('g1'), /<qemu:arg value='unix:\/var\/lib\/libvirt\/qemu\/g1\.migsafe\.qmp,server=on,wait=off'\/>/);
});
