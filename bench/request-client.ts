// The client of E8 (bench/request-latency.ts), run in a network namespace of its own host:
// sends one UDP request a 1/rate s to a service, times each reply.
//
//   node request-client.js <rate/s> <port> <out file> <ip> [<ip> ...]
//
// Each request (its text: a sequence number) goes to every address given — the hosts the VM
// may run on, as a network would deliver it wherever the VM is now (only the host that runs
// the VM passes it in: src/ha/gate.ts). Lines of the out file, times in ms since the epoch
// (fractional, on this machine's clock, which the experiment shares):
//   s <id> <sent>        r <id> <received> <from ip>
// Flushed every 200 ms and at SIGTERM, so a killed run keeps what it measured.
import { createSocket } from 'node:dgram';
import { appendFileSync, writeFileSync } from 'node:fs';

const [rateArg, portArg, out, ...ips] = process.argv.slice(2);
const rate = Number(rateArg);
const port = Number(portArg);
if (!(rate > 0) || !(port > 0) || !out || !ips.length) {
  process.stderr.write('usage: request-client <rate/s> <port> <out file> <ip> [<ip> ...]\n');
  process.exit(2);
}
const now = () => performance.timeOrigin + performance.now();
writeFileSync(out, '');
let lines: string[] = [];
const flush = () => {
  if (lines.length) appendFileSync(out, lines.join('\n') + '\n');
  lines = [];
};
const sock = createSocket('udp4');
sock.on('message', (m, from) => {
  const id = /id=(\d+)/.exec(m.toString('latin1'))?.[1];
  if (id) lines.push(`r ${id} ${now().toFixed(2)} ${from.address}`);
});
sock.on('error', () => {});
let id = 0;
const start = now();
const period = 1000 / rate;
// Sends are scheduled against the start, not the last send: a late timer does not lower the rate.
const send = () => {
  const due = start + (id + 1) * period;
  while (now() >= start + id * period) {
    id++;
    const body = Buffer.from(String(id));
    lines.push(`s ${id} ${now().toFixed(2)}`);
    for (const ip of ips) sock.send(body, port, ip);
  }
  setTimeout(send, Math.max(0, due - now()));
};
sock.bind(0, () => send());
setInterval(flush, 200);
process.on('SIGTERM', () => {
  flush();
  process.exit(0);
});
