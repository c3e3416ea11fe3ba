// The patched QEMU's migsafe-ft socket and eventfds (qemu-patches/PROTOCOL.md): a SOCK_SEQPACKET
// unix socket whose replies carry fds as SCM_RIGHTS (addon/src/fdpass.cc). src/qemu/ft-client.ts
// speaks the protocol; this file is only its transport, with the arguments checked before they
// reach C++.
import { native } from './native.js';

function checkFd(fd: number, what: string): void {
  if (!Number.isInteger(fd) || fd < 0) throw new TypeError(`${what}: not a file descriptor (${fd})`);
}

/** Connects to the socket at `path`; returns its fd (throws if nobody listens). */
export function ftConnect(path: string): number {
  return native().ftConnect(path);
}

/** Sends one message, with `sendFd` as SCM_RIGHTS if given. */
export function ftSend(sock: number, message: string, sendFd?: number): void {
  checkFd(sock, 'ftSend socket');
  if (sendFd !== undefined) checkFd(sendFd, 'ftSend fd to pass');
  native().ftSend(sock, message, sendFd);
}

/** Receives one message and the fds that came with it; throws after `timeoutMs`. */
export function ftRecv(sock: number, timeoutMs: number): { message: string; fds: number[] } {
  checkFd(sock, 'ftRecv socket');
  return native().ftRecv(sock, timeoutMs);
}

/** Adds 1 to an eventfd. */
export function eventfdSignal(fd: number): void {
  checkFd(fd, 'eventfdSignal');
  native().eventfdSignal(fd);
}

/** Waits (off the event loop) for an eventfd; resolves with its counter, 0 on timeout. */
export function eventfdWaitAsync(fd: number, timeoutMs: number): Promise<number> {
  checkFd(fd, 'eventfdWaitAsync');
  return native().eventfdWaitAsync(fd, timeoutMs);
}

export function closeFd(fd: number): void {
  checkFd(fd, 'closeFd');
  native().closeFd(fd);
}
