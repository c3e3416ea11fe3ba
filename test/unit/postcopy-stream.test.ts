// The post-copy source's stream, byte for byte against what QEMU's own source writes
// (migration/savevm.c, ram.c: qemu_savevm_command_send, ram_save_setup, save_zero_page,
// save_normal_page, save_section_header/footer), and the return path as QEMU writes it
// (migrate_send_rp_message_req_pages).
import t from 'tap';
import {
  ReturnPathParser,
  deviceSections,
  postcopyAdvise,
  postcopyRamDiscard,
  ramPagesSection,
  ramSetupSection,
  streamEpilogue,
  streamHeader,
  streamPrologue,
  switchoverPackage,
  RAM_SECTION_ID,
} from '../../src/recovery/postcopy-stream.js';

const hex = (b: Buffer) => b.toString('hex');
const id = RAM_SECTION_ID.toString(16).padStart(8, '0');
const ramName = Buffer.from('migsafe-ram').toString('hex'); // 11 bytes

t.test('header, commands', async (t) => {
  t.equal(hex(streamHeader()), '5145564d' + '00000003', 'QEVM, version 3, no configuration section');
  // QEMU_VM_COMMAND, be16 MIG_CMD_POSTCOPY_ADVISE (3), be16 16, be64 page-size summary, be64 target page size.
  t.equal(hex(postcopyAdvise()), '08' + '0003' + '0010' + '0000000000001000' + '0000000000001000');
  // MIG_CMD_POSTCOPY_RAM_DISCARD (6): version 0, counted name, nil, be64 start, be64 length.
  t.equal(hex(postcopyRamDiscard('migsafe-ram', [[0, 4096]])), '08' + '0006' + '001e' + '00' + '0b' + ramName + '00' + '0000000000000000' + '0000000000001000');
});

t.test('the RAM setup section', async (t) => {
  const s = ramSetupSection([{ name: 'migsafe-ram', bytes: 256 << 20 }]);
  t.equal(
    hex(s),
    '01' + id + '03' + Buffer.from('ram').toString('hex') + '00000000' + '00000004' + // START, id, "ram", instance 0, version 4
      '0000000010000004' + // total bytes | RAM_SAVE_FLAG_MEM_SIZE
      '0b' + ramName + '0000000010000000' + // the block, its used length
      '0000000000000010' + // RAM_SAVE_FLAG_EOS
      '7e' + id, // QEMU_VM_SECTION_FOOTER, id
  );
});

t.test('pages: block name once, then CONTINUE; zero pages as a fill byte', async (t) => {
  const page = Buffer.alloc(4096, 0xab);
  const s = ramPagesSection([
    { block: 'migsafe-ram', offset: 0x5000, data: page },
    { block: 'migsafe-ram', offset: 0x6000 },
    { block: 'pc.bios', offset: 0x1000 },
  ]);
  const want =
    '02' + id +
    '0000000000005008' + '0b' + ramName + hex(page) + // RAM_SAVE_FLAG_PAGE, name
    '0000000000006022' + '00' + // ZERO | CONTINUE, fill byte 0
    '0000000000001002' + '07' + Buffer.from('pc.bios').toString('hex') + '00' + // another block: named again
    '0000000000000010' + '7e' + id;
  t.equal(hex(s), want);
  t.equal(hex(streamEpilogue()), '03' + id + '0000000000000010' + '7e' + id + '00', 'END section with EOS only, then QEMU_VM_EOF');
  t.throws(() => ramPagesSection([{ block: 'migsafe-ram', offset: 100 }]), /not page aligned/);
  t.throws(() => ramPagesSection([{ block: 'migsafe-ram', offset: 0, data: Buffer.alloc(10) }]), /page of 10 bytes/);
});

t.test('the device state is packaged with LISTEN and RUN, without its header and EOF', async (t) => {
  const sections = Buffer.from('04000000010474696d65720000000000000002' + 'aabbcc', 'hex'); // FULL "timer" ...
  const saved = Buffer.concat([streamHeader(), sections, Buffer.from([0])]);
  t.equal(hex(deviceSections(saved)), hex(sections));
  const listen = '08' + '0004' + '0000';
  const run = '08' + '0005' + '0000';
  const blob = listen + hex(sections) + run;
  t.equal(hex(switchoverPackage(saved)), '08' + '0007' + '0004' + (blob.length / 2).toString(16).padStart(8, '0') + blob, 'MIG_CMD_PACKAGED, be32 length, blob');
  t.throws(() => deviceSections(Buffer.from('not a stream at all')), /no QEVM magic/);
  t.throws(() => deviceSections(Buffer.concat([streamHeader(), sections])), /does not end with QEMU_VM_EOF/);
  const pro = streamPrologue([{ name: 'migsafe-ram', bytes: 4096 }], saved);
  t.equal(hex(pro.subarray(0, 8)), hex(streamHeader()));
  t.equal(hex(pro.subarray(8, 13)), '08' + '0001' + '0000', 'then MIG_CMD_OPEN_RETURN_PATH');
  t.ok(pro.subarray(-switchoverPackage(saved).length).equals(switchoverPackage(saved)), 'the package last');
});

t.test('the return path: REQ_PAGES_ID names the block, REQ_PAGES reuses it; split reads', async (t) => {
  const p = new ReturnPathParser();
  const reqId = Buffer.from('0003' + '0018' + '00000000000c0000' + '00001000' + '0b' + ramName, 'hex');
  const req = Buffer.from('0004' + '000c' + '0000000000003000' + '00001000', 'hex');
  const shut = Buffer.from('0001' + '0004' + '00000000', 'hex');
  const all = Buffer.concat([reqId, req, shut]);
  const out = [...p.push(all.subarray(0, 5)), ...p.push(all.subarray(5, 30)), ...p.push(all.subarray(30))];
  t.same(out, [
    { type: 'req-pages', block: 'migsafe-ram', offset: 0xc0000, length: 4096 },
    { type: 'req-pages', block: 'migsafe-ram', offset: 0x3000, length: 4096 },
    { type: 'shut', status: 0 },
  ]);
  t.throws(() => new ReturnPathParser().push(req), /before any block was named/);
});
