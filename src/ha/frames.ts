// Ethernet frames the output gate writes to a guest NIC: an IPv4/UDP datagram from the host's
// network, addressed to the guest. Only what the gate needs: no options, no fragments, the UDP
// checksum left 0 (allowed for IPv4, RFC 768), the IPv4 header checksum computed.

export interface GuestAddress {
  mac: Buffer;
  /** The guest's IPv4 address, 4 bytes. */
  ip: Buffer;
}

/** The 16-bit ones' complement sum of an IPv4 header (RFC 1071). */
export function ipv4Checksum(header: Buffer): number {
  let sum = 0;
  for (let i = 0; i + 1 < header.length; i += 2) sum += header.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

export function ipBytes(ip: string): Buffer {
  const parts = ip.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) throw new Error(`not an IPv4 address: ${ip}`);
  return Buffer.from(parts);
}

/** One Ethernet frame carrying `payload` from `from` (ip:port) to the guest at `port`. */
export function udpFrameToGuest(guest: GuestAddress, srcMac: Buffer, from: { ip: string; port: number }, port: number, payload: Buffer, ipId = 0): Buffer {
  const f = Buffer.alloc(14 + 20 + 8 + payload.length);
  guest.mac.copy(f, 0);
  srcMac.copy(f, 6);
  f.writeUInt16BE(0x0800, 12);
  const ip = f.subarray(14, 34);
  ip[0] = 0x45; // version 4, 20-byte header
  ip.writeUInt16BE(20 + 8 + payload.length, 2);
  ip.writeUInt16BE(ipId & 0xffff, 4);
  ip.writeUInt16BE(0x4000, 6); // don't fragment
  ip[8] = 64; // TTL
  ip[9] = 17; // UDP
  ipBytes(from.ip).copy(ip, 12);
  guest.ip.copy(ip, 16);
  ip.writeUInt16BE(ipv4Checksum(ip), 10);
  const udp = f.subarray(34);
  udp.writeUInt16BE(from.port, 0);
  udp.writeUInt16BE(port, 2);
  udp.writeUInt16BE(8 + payload.length, 4);
  payload.copy(udp, 8);
  return f;
}
