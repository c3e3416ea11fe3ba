// The ownership rule and the output gate, against a real redis-server and real UDP sockets.
import t from 'tap';
import { createSocket } from 'node:dgram';
import { setTimeout as sleep } from 'node:timers/promises';
import { Lease } from '../../src/ha/lease.js';
import { OutputGate } from '../../src/ha/gate.js';
import { testClient, testRedis } from '../helpers/redis.js';

t.test('only one host holds the lease; it passes on by expiry or by hand-over', async (t) => {
  const srv = await testRedis(t);
  const r = testClient(t, srv.url);
  const a = new Lease(r, 'vm1', 'src', 600);
  const b = new Lease(r, 'vm1', 'dst', 600);
  t.ok(await a.acquire(), 'src takes the free lease');
  t.notOk(await b.acquire(), 'dst cannot take it while src holds it');
  t.equal((await b.holder())?.host, 'src');
  await sleep(400);
  t.ok(await a.renew(), 'src renews');
  await sleep(400);
  t.notOk(await b.acquire(), 'renewed: still src');
  // src stops renewing (dead, or cut off from the store): the lease expires, dst takes it.
  await sleep(700);
  t.ok(await b.acquire(), 'after expiry dst takes it');
  t.ok(b.token > a.token, `fencing token grows (${a.token} → ${b.token})`);
  t.notOk(await a.renew(), 'the old holder cannot renew');
  t.ok(a.lost, '... and knows it lost the lease (it must kill its QEMU)');
  // Hand-over at switchover: atomic, only by the holder.
  t.equal(await a.handOver('src'), 0, 'a non-holder cannot hand over');
  const tok = await b.handOver('src');
  t.ok(tok > b.token, 'the holder hands over with a new token');
  a.adopt(tok);
  t.ok(await a.renew(), 'the new holder renews with the handed token');
  t.equal((await a.holder())?.host, 'src');
  t.ok(a.safe(100), 'the holder is safe right after renewing');
  await sleep(600);
  t.notOk(a.safe(100), 'without renewals it is not safe once ttl − margin passed (time to fence)');
});

t.test('the gate holds UDP frames until the round that explains them commits, answers ARP at once', async (t) => {
  const gatePort = 47_301;
  const nicPort = 47_302;
  const gate = await OutputGate.open(gatePort, nicPort);
  t.teardown(() => gate.close());
  const nic = createSocket('udp4');
  const peer = createSocket('udp4');
  t.teardown(() => {
    nic.close();
    peer.close();
  });
  await new Promise<void>((res) => nic.bind(nicPort, '127.0.0.1', () => res()));
  await new Promise<void>((res) => peer.bind(0, '127.0.0.1', () => res()));
  const peerPort = (peer.address() as { port: number }).port;
  const got: string[] = [];
  peer.on('message', (m) => got.push(m.toString()));
  const arpReplies: Buffer[] = [];
  nic.on('message', (m) => arpReplies.push(m));

  const frame = (payload: string) => {
    const p = Buffer.from(payload);
    const f = Buffer.alloc(14 + 20 + 8 + p.length);
    f.writeUInt16BE(0x0800, 12);
    f[14] = 0x45;
    f.writeUInt16BE(20 + 8 + p.length, 16);
    f[14 + 9] = 17;
    Buffer.from([192, 168, 77, 2]).copy(f, 14 + 12);
    Buffer.from([127, 0, 0, 1]).copy(f, 14 + 16);
    f.writeUInt16BE(40000, 34);
    f.writeUInt16BE(peerPort, 36);
    f.writeUInt16BE(8 + p.length, 38);
    p.copy(f, 42);
    return f;
  };
  const send = (b: Buffer) => new Promise<void>((res) => nic.send(b, gatePort, '127.0.0.1', () => res()));
  await send(frame('one'));
  await send(frame('two'));
  await sleep(100);
  t.same(got, [], 'nothing leaves before a commit');
  const mark = gate.mark();
  await send(frame('three'));
  await sleep(100);
  t.equal(gate.release(mark), 2, 'the commit releases what came before its mark');
  await sleep(100);
  t.same(got, ['one', 'two']);
  t.equal(gate.pending, 1, 'the later frame waits for the next round');
  t.equal(gate.discard(), 1, 'a fenced copy drops what it holds');
  // ARP request for 192.168.77.1 from the guest.
  const arp = Buffer.alloc(42);
  arp.fill(0xff, 0, 6);
  Buffer.from([0x52, 0x54, 0, 0x12, 0x34, 0x56]).copy(arp, 6);
  arp.writeUInt16BE(0x0806, 12);
  arp.writeUInt16BE(1, 14);
  arp.writeUInt16BE(0x0800, 16);
  arp[18] = 6;
  arp[19] = 4;
  arp.writeUInt16BE(1, 20);
  Buffer.from([0x52, 0x54, 0, 0x12, 0x34, 0x56]).copy(arp, 22);
  Buffer.from([192, 168, 77, 2]).copy(arp, 28);
  Buffer.from([192, 168, 77, 1]).copy(arp, 38);
  await send(arp);
  await sleep(100);
  t.equal(arpReplies.length, 1, 'ARP is answered at once');
  t.equal(arpReplies[0]!.readUInt16BE(20), 2, 'an ARP reply');
  t.same([...arpReplies[0]!.subarray(28, 32)], [192, 168, 77, 1], 'for the asked address');
});
