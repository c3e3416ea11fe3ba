// The output gate's inbound path (src/ha/gate.ts, src/ha/frames.ts) on real loopback sockets:
// a datagram to the inbound port reaches the guest NIC's socket as an IPv4/UDP frame to the
// guest's address from its sender; the guest's answer is held, leaves from the inbound port
// once released; nothing is passed in while the VM does not run here or before its NIC named
// its MAC.
import t from 'tap';
import { createSocket, type Socket } from 'node:dgram';
import { once } from 'node:events';
import { OutputGate } from '../../src/ha/gate.js';
import { ipv4Checksum, udpFrameToGuest } from '../../src/ha/frames.js';

const GUEST_MAC = Buffer.from([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

async function bound(port = 0): Promise<Socket> {
  const s = createSocket('udp4');
  await new Promise<void>((r) => s.bind(port, '127.0.0.1', () => r()));
  return s;
}
const portOf = (s: Socket) => s.address().port;

t.test('udpFrameToGuest: header fields and checksum', async (t) => {
  const f = udpFrameToGuest({ mac: GUEST_MAC, ip: Buffer.from([192, 168, 77, 2]) }, Buffer.alloc(6, 2), { ip: '10.0.0.9', port: 40000 }, 7007, Buffer.from('42'), 5);
  t.equal(f.length, 14 + 20 + 8 + 2);
  t.same([...f.subarray(0, 6)], [...GUEST_MAC], 'to the guest MAC');
  t.equal(f.readUInt16BE(12), 0x0800, 'IPv4');
  t.equal(ipv4Checksum(f.subarray(14, 34)), 0, 'the IPv4 header sums to 0 with its checksum');
  t.same([...f.subarray(26, 30)], [10, 0, 0, 9], 'from the sender');
  t.same([...f.subarray(30, 34)], [192, 168, 77, 2], 'to the guest');
  t.equal(f.readUInt16BE(34), 40000);
  t.equal(f.readUInt16BE(36), 7007);
  t.equal(f.subarray(42).toString(), '42');
});

/** A guest's UDP frame from 192.168.77.2:`srcPort` to ip:port. */
function guestFrame(srcPort: number, ip: number[], port: number, payload: string): Buffer {
  const body = Buffer.from(payload);
  const f = Buffer.alloc(14 + 20 + 8 + body.length);
  Buffer.alloc(6, 2).copy(f, 0);
  GUEST_MAC.copy(f, 6);
  f.writeUInt16BE(0x0800, 12);
  f[14] = 0x45;
  f.writeUInt16BE(28 + body.length, 16);
  f[23] = 17;
  Buffer.from([192, 168, 77, 2]).copy(f, 26);
  Buffer.from(ip).copy(f, 30);
  f.writeUInt16BE(srcPort, 34);
  f.writeUInt16BE(port, 36);
  f.writeUInt16BE(8 + body.length, 38);
  body.copy(f, 42);
  return f;
}

t.test('inbound in, answer held, released from the inbound port', async (t) => {
  const nic = await bound();
  const probe = await bound();
  const gatePort = portOf(probe);
  probe.close();
  const inProbe = await bound();
  const inPort = portOf(inProbe);
  inProbe.close();
  const gate = await OutputGate.open(gatePort, portOf(nic));
  t.teardown(() => (gate.close(), nic.close()));
  await gate.openInbound('192.168.77.2', inPort);
  const client = await bound();
  t.teardown(() => client.close());
  const frames: Buffer[] = [];
  nic.on('message', (m) => frames.push(m));
  const settle = () => new Promise((r) => setTimeout(r, 100));

  client.send('1', inPort, '127.0.0.1');
  await settle();
  t.equal(frames.length, 0, 'not passed in while the VM does not run here');
  gate.setInbound(true);
  client.send('2', inPort, '127.0.0.1');
  await settle();
  t.equal(frames.length, 0, 'not passed in before the NIC named its MAC');
  t.equal(gate.stats.inboundDropped, 2);

  // The guest's NIC speaks (an announcement would do): its MAC is known from then on.
  nic.send(guestFrame(9, [127, 0, 0, 1], 9, 'hello'), gatePort, '127.0.0.1');
  await settle();
  client.send('3', inPort, '127.0.0.1');
  await settle();
  t.equal(frames.length, 1, 'passed in');
  const f = frames[0]!;
  t.same([...f.subarray(0, 6)], [...GUEST_MAC], 'to the MAC the NIC named');
  t.same([...f.subarray(30, 34)], [192, 168, 77, 2], 'to the configured guest address');
  t.equal(f.readUInt16BE(34), portOf(client), "from the client's port");
  t.equal(f.readUInt16BE(36), inPort, 'to the same port in the guest');
  t.equal(f.subarray(42).toString(), '3');

  // The guest answers from the service port: held until released, then from the inbound port.
  const answer = once(client, 'message');
  nic.send(guestFrame(inPort, [127, 0, 0, 1], portOf(client), 'reply 3'), gatePort, '127.0.0.1');
  await settle();
  t.equal(gate.pending, 2, "the answer is held (with the NIC's first frame)");
  gate.release(gate.mark());
  const [msg, from] = (await answer) as [Buffer, { port: number }];
  t.equal(msg.toString(), 'reply 3');
  t.equal(from.port, inPort, 'it leaves from the inbound port');

  gate.setInbound(false);
  gate.setInbound(true);
  client.send('4', inPort, '127.0.0.1');
  await settle();
  t.equal(frames.length, 1, 'after the VM left, its MAC is forgotten until the NIC speaks again');
});
