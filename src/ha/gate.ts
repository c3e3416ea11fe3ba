// Output commit on stock QEMU: the guest's NIC is a `-netdev socket,udp=127.0.0.1:GATE,
// localaddr=127.0.0.1:NIC` whose other end is this gate, in the sidecar. Every Ethernet frame
// the guest sends arrives here as one datagram. ARP requests are answered at once (they reveal
// nothing of the guest's state); IPv4/UDP frames are HELD, and released to the host's network
// only when the checkpoint round that explains them has been committed:
//
//   round: stop VM ... mark() (VM still paused: every frame sent before the pause is in) ...
//          cont ... commit OK → release(mark)        commit failed → keep holding
//
// Released datagrams are sent from a host UDP socket to the destination address and port of
// the guest's packet (a user-space NAT: enough for a guest that reports to a peer). Frames
// that are not ARP or IPv4/UDP are dropped and counted.
//
// Inbound (openInbound): datagrams to one UDP port of this host go into the guest, to its
// address and the same port, as frames from their sender — port forwarding, for a service in
// the guest (npm run eval's E8). They are not held: input does not reveal the guest's state,
// only what the guest answers does, and that is held like every other frame. They are passed
// in only while the VM runs on this host (setInbound, from the agent's role) and once a frame
// from the NIC here named its MAC: at a destination, the announcement QEMU sends as the VM
// resumes (RARP), as a real network's switches learn from it that the VM moved.
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { EventEmitter } from 'node:events';
import { ipBytes, udpFrameToGuest } from './frames.js';

/** Loopback ports of the gate and of the guest NIC's end, the same on every host. */
export const GATE_PORT = 47_001;
export const NIC_PORT = 47_002;

/** The -netdev value a guest NIC needs to go through the gate. */
export function gateNetdev(id = 'n0', gatePort = GATE_PORT, nicPort = NIC_PORT): string {
  return `socket,id=${id},udp=127.0.0.1:${gatePort},localaddr=127.0.0.1:${nicPort}`;
}

/** The MAC the gate answers ARP with (locally administered). */
const GATE_MAC = Buffer.from([0x02, 0x6d, 0x69, 0x67, 0x73, 0x66]);

export interface GateStats {
  held: number;
  released: number;
  arpAnswered: number;
  dropped: number;
  /** Inbound datagrams passed into the guest, and dropped (the VM does not run here, or its address is not known yet). */
  inbound: number;
  inboundDropped: number;
}

interface Held {
  seq: number;
  /** performance.now() when it was held, for the hold time. */
  at: number;
  ip: string;
  port: number;
  /** The guest's source port: a service's answers leave from the inbound socket, its port. */
  srcPort: number;
  payload: Buffer;
}

/** Emits 'frame' when a frame is held. */
export class OutputGate extends EventEmitter {
  private readonly nicSock: Socket;
  private readonly outSock: Socket;
  private queue: Held[] = [];
  private seq = 0;
  private closed = false;
  readonly stats: GateStats = { held: 0, released: 0, arpAnswered: 0, dropped: 0, inbound: 0, inboundDropped: 0 };
  private inSock?: Socket;
  private inPort = 0;
  private inOn = false;
  private guestIp?: Buffer;
  /** The guest NIC's MAC, from its last frame (undefined: none seen since the VM runs here). */
  private guestMac?: Buffer;
  /** When false, frames pass through at once (no checkpointing is running). */
  holding = true;

  private constructor(
    nicSock: Socket,
    outSock: Socket,
    private readonly nicPort: number,
  ) {
    super();
    this.nicSock = nicSock;
    this.outSock = outSock;
    nicSock.on('message', (m) => this.onFrame(m));
    nicSock.on('error', () => {});
    outSock.on('error', () => {});
  }

  static async open(gatePort = GATE_PORT, nicPort = NIC_PORT): Promise<OutputGate> {
    const nic = createSocket('udp4');
    await new Promise<void>((res, rej) => {
      nic.once('error', rej);
      nic.bind(gatePort, '127.0.0.1', () => res());
    });
    const out = createSocket('udp4');
    await new Promise<void>((res) => out.bind(0, () => res()));
    return new OutputGate(nic, out, nicPort);
  }

  /** Passes datagrams to `port` of this host into the guest at `guestIp`, to the same port (see the head of this file). */
  async openInbound(guestIp: string, port: number): Promise<void> {
    this.guestIp = ipBytes(guestIp);
    const sock = createSocket('udp4');
    await new Promise<void>((res, rej) => {
      sock.once('error', rej);
      sock.bind(port, () => res());
    });
    sock.on('error', () => {});
    sock.on('message', (m, from) => this.onInbound(m, from));
    this.inSock = sock;
    this.inPort = port;
  }

  /** Whether the VM runs on this host. Off forgets the guest's address: a later run here must announce itself again. */
  setInbound(on: boolean): void {
    if (!on) this.guestMac = undefined;
    this.inOn = on;
  }

  private onInbound(m: Buffer, from: RemoteInfo): void {
    if (this.closed) return;
    if (!this.inOn || !this.guestMac || !this.guestIp) return void this.stats.inboundDropped++;
    this.stats.inbound++;
    this.nicSock.send(udpFrameToGuest({ mac: this.guestMac, ip: this.guestIp }, GATE_MAC, { ip: from.address, port: from.port }, this.inPort, m, this.stats.inbound), this.nicPort, '127.0.0.1');
  }

  /** Everything received so far belongs to the state being checkpointed. */
  mark(): number {
    return this.seq;
  }

  /** The round that covered frames up to `mark` is committed: let them out. `onHeld`: each one's hold time, s. */
  release(mark: number, onHeld?: (seconds: number) => void): number {
    let n = 0;
    const now = performance.now();
    while (this.queue.length && this.queue[0]!.seq <= mark) {
      const h = this.queue.shift()!;
      this.send(h);
      onHeld?.((now - h.at) / 1000);
      n++;
    }
    return n;
  }

  /** Frames still held (e.g. for a log line). */
  get pending(): number {
    return this.queue.length;
  }

  /** Drops everything held: the state that produced it is abandoned (the VM is gone here). */
  discard(): number {
    const n = this.queue.length;
    this.queue = [];
    return n;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.nicSock.close();
    this.outSock.close();
    this.inSock?.close();
  }

  private send(h: Held): void {
    if (this.closed) return;
    this.stats.released++;
    const sock = this.inSock && h.srcPort === this.inPort ? this.inSock : this.outSock;
    sock.send(h.payload, h.port, h.ip);
  }

  private onFrame(f: Buffer): void {
    if (f.length < 14) return void this.stats.dropped++;
    if (this.inSock) this.guestMac = Buffer.from(f.subarray(6, 12));
    const type = f.readUInt16BE(12);
    if (type === 0x0806) return this.onArp(f);
    if (type !== 0x0800 || f.length < 14 + 20) return void this.stats.dropped++;
    const ipHdr = f.subarray(14);
    const ihl = (ipHdr[0]! & 0x0f) * 4;
    if (ipHdr[9] !== 17 || ipHdr.length < ihl + 8) return void this.stats.dropped++;
    const fragOff = ipHdr.readUInt16BE(6) & 0x3fff;
    if (fragOff !== 0 && (ipHdr.readUInt16BE(6) & 0x1fff) !== 0) return void this.stats.dropped++;
    const dst = `${ipHdr[16]}.${ipHdr[17]}.${ipHdr[18]}.${ipHdr[19]}`;
    const udp = ipHdr.subarray(ihl);
    const port = udp.readUInt16BE(2);
    const len = udp.readUInt16BE(4);
    const payload = Buffer.from(udp.subarray(8, Math.max(8, Math.min(len, udp.length))));
    const h: Held = { seq: ++this.seq, at: performance.now(), ip: dst, port, srcPort: udp.readUInt16BE(0), payload };
    if (!this.holding) return this.send(h);
    this.stats.held++;
    this.queue.push(h);
    this.emit('frame');
  }

  private onArp(f: Buffer): void {
    const a = f.subarray(14);
    if (a.length < 28 || a.readUInt16BE(6) !== 1) return; // requests only
    const senderMac = a.subarray(8, 14);
    const senderIp = a.subarray(14, 18);
    const targetIp = a.subarray(24, 28);
    if (targetIp.equals(senderIp)) return; // gratuitous ARP
    const reply = Buffer.alloc(42);
    senderMac.copy(reply, 0);
    GATE_MAC.copy(reply, 6);
    reply.writeUInt16BE(0x0806, 12);
    reply.writeUInt16BE(1, 14); // Ethernet
    reply.writeUInt16BE(0x0800, 16);
    reply[18] = 6;
    reply[19] = 4;
    reply.writeUInt16BE(2, 20); // reply
    GATE_MAC.copy(reply, 22);
    targetIp.copy(reply, 28);
    senderMac.copy(reply, 32);
    senderIp.copy(reply, 38);
    this.stats.arpAnswered++;
    this.nicSock.send(reply, this.nicPort, '127.0.0.1');
  }
}
