// A stand-in for QEMU's QMP monitor on a unix socket, for tests of what the client does when
// QEMU misbehaves (no answer, malformed or huge lines). Commands are answered in order, as
// QEMU does; `handle` returns the reply object (or a promise of it) or a raw string to send.
import { createServer, type Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';

export interface QmpCommand {
  execute?: string;
  'exec-oob'?: string;
  arguments?: Record<string, unknown>;
  id?: string;
}

export type Handler = (cmd: QmpCommand, sock: Socket) => unknown | Promise<unknown>;

export interface FakeQmp {
  path: string;
  /** Every command received, in order (execute or exec-oob name). */
  log: string[];
  /** Writes a raw string to every connected client. */
  send(raw: string): void;
}

export const GREETING = { QMP: { version: { qemu: { major: 8, minor: 2, micro: 0 } }, capabilities: ['oob'] } };

export async function fakeQmp(t: Test, handle: Handler, opts: { greeting?: unknown | null } = {}): Promise<FakeQmp> {
  const dir = mkdtempSync(join(tmpdir(), 'migsafe-fakeqmp-'));
  const path = join(dir, 'qmp.sock');
  const log: string[] = [];
  const socks = new Set<Socket>();
  const write = (sock: Socket, reply: unknown) => {
    if (reply === undefined || sock.destroyed) return;
    sock.write(typeof reply === 'string' ? reply : JSON.stringify(reply) + '\n');
  };
  const srv = createServer((sock) => {
    socks.add(sock);
    sock.on('close', () => socks.delete(sock));
    sock.on('error', () => {});
    const greeting = opts.greeting === undefined ? GREETING : opts.greeting;
    if (greeting !== null) write(sock, greeting);
    let buf = '';
    let inOrder: Promise<void> = Promise.resolve();
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const cmd = JSON.parse(buf.slice(0, nl)) as QmpCommand;
        buf = buf.slice(nl + 1);
        log.push(cmd.execute ?? cmd['exec-oob'] ?? '?');
        if (cmd.execute === 'qmp_capabilities') {
          inOrder = inOrder.then(() => write(sock, { return: {} }));
        } else if (cmd['exec-oob']) {
          // Out of band: not behind the in-band queue.
          void Promise.resolve(handle(cmd, sock)).then((r) => write(sock, r));
        } else {
          inOrder = inOrder.then(async () => write(sock, await handle(cmd, sock)));
        }
      }
    });
  });
  await new Promise<void>((r) => srv.listen(path, r));
  t.teardown(async () => {
    for (const s of socks) s.destroy();
    await new Promise((r) => srv.close(r));
    rmSync(dir, { recursive: true, force: true });
  });
  return { path, log, send: (raw) => socks.forEach((s) => s.write(raw)) };
}
