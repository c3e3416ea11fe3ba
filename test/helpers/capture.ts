// A real packet capture for tests: tcpdump (Debian's, installed by scripts/setup.sh) inside a
// test host's namespace, writing a pcap file; and a count of a byte pattern in what it caught.
import type { ChildProcess } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import type { Host, Hosts } from './hosts.js';

export interface Capture {
  file: string;
  /** Stops tcpdump (SIGINT: it flushes the file) and waits for it. */
  stop(): Promise<void>;
  /** tcpdump's own report ("N packets captured", "N packets dropped by kernel"). */
  report(): string;
}

/** Starts tcpdump on `iface` in `host` with a BPF `filter`; resolves once it listens. */
export async function startCapture(hosts: Hosts, host: Host, iface: string, filter: string, file: string): Promise<Capture> {
  const child: ChildProcess = hosts.spawn(host, ['tcpdump', '-i', iface, '-n', '-s', '0', '-U', '-B', '16384', '-w', file, filter], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<void>((res) => child.once('exit', () => res()));
  await new Promise<void>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`tcpdump did not start in 10 s: ${err}`)), 10_000);
    const check = () => {
      if (/listening on/.test(err)) {
        clearTimeout(timer);
        res();
      }
    };
    child.stderr!.on('data', check);
    child.once('exit', (code) => {
      clearTimeout(timer);
      rej(new Error(`tcpdump exited (${code}) before it listened: ${err.trim()} (apt-get install tcpdump; scripts/setup.sh does)`));
    });
  });
  return {
    file,
    async stop() {
      child.kill('SIGINT');
      await exited;
    },
    report: () => err.trim(),
  };
}

/** How often `pattern` occurs in the bytes of `file` (a pcap: headers never hold it). */
export function countPattern(file: string, pattern: Buffer): number {
  const b = readFileSync(file);
  let n = 0;
  for (let i = b.indexOf(pattern); i >= 0; i = b.indexOf(pattern, i + 1)) n++;
  return n;
}

export function fileBytes(file: string): number {
  return statSync(file).size;
}
