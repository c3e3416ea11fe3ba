// A small QMP client: one socket, commands answered in order, events to listeners.
import { connect, type Socket } from 'node:net';
import { EventEmitter } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';

export class QmpError extends Error {
  constructor(
    readonly command: string,
    readonly qmpClass: string,
    desc: string,
  ) {
    super(`QMP ${command} failed: ${qmpClass}: ${desc}`);
  }
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

/** Connected, capabilities negotiated. Emits 'event' (QmpEvent) and 'close'. */
export class QmpClient extends EventEmitter {
  private buf = '';
  private queue: Pending[] = [];
  private closed = false;

  private constructor(private readonly sock: Socket) {
    super();
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('close', () => this.onClose());
    sock.on('error', () => {
      /* reported through 'close' and rejected commands */
    });
  }

  /** Connects to a QMP unix socket, retrying until `timeoutMs` (QEMU may still be starting). */
  static async connect(path: string, timeoutMs = 10_000): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    let lastErr: unknown;
    while (Date.now() < deadline) {
      try {
        const sock = await new Promise<Socket>((resolve, reject) => {
          const s = connect(path);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        const client = new QmpClient(sock);
        await client.greeting();
        await client.execute('qmp_capabilities');
        return client;
      } catch (e) {
        lastErr = e;
        await sleep(50);
      }
    }
    throw new Error(`cannot connect to QMP socket ${path}: ${(lastErr as Error)?.message ?? 'timeout'}`);
  }

  private greetingWaiter?: { resolve: () => void; reject: (e: Error) => void };

  private greeting(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.greetingWaiter = { resolve, reject };
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Runs one QMP command and resolves with its `return` value. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) return Promise.reject(new Error(`QMP ${command}: connection to QEMU is closed`));
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ command, resolve: resolve as (v: unknown) => void, reject });
      this.sock.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
    });
  }

  /** Resolves with the first event named `name` (optionally matching `filter`) within `timeoutMs`. */
  waitEvent(name: string, timeoutMs: number, filter?: (e: QmpEvent) => boolean): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const onEvent = (e: QmpEvent) => {
        if (e.event === name && (!filter || filter(e))) {
          cleanup();
          resolve(e);
        }
      };
      const onClose = () => {
        cleanup();
        reject(new Error(`QEMU closed QMP while waiting for ${name}`));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for QMP event ${name}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  close(): void {
    this.sock.destroy();
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      if ('QMP' in msg) {
        this.greetingWaiter?.resolve();
        this.greetingWaiter = undefined;
      } else if ('event' in msg) {
        this.emit('event', msg as unknown as QmpEvent);
      } else if ('return' in msg || 'error' in msg) {
        const p = this.queue.shift();
        if (!p) continue;
        if ('error' in msg) {
          const err = msg.error as { class: string; desc: string };
          p.reject(new QmpError(p.command, err.class, err.desc));
        } else {
          p.resolve(msg.return);
        }
      }
    }
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    const err = new Error('connection to QEMU (QMP) closed');
    this.greetingWaiter?.reject(err);
    for (const p of this.queue.splice(0)) p.reject(new Error(`QMP ${p.command}: ${err.message}`));
    this.emit('close');
  }
}
