// A small QMP client: one socket, commands answered in order, events to listeners; with
// `{ oob: true }` also out-of-band commands (`exec-oob`, answered by id, run by QEMU's monitor
// thread even while the main loop is stuck — e.g. in `stop` waiting for a vCPU blocked on a
// post-copy page that will never come).
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
  private oobPending = new Map<string, Pending>();
  private oobSeq = 0;
  private closed = false;
  /** QEMU offered out-of-band execution and it was enabled (connect with `{ oob: true }`). */
  oob = false;

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
  static async connect(path: string, timeoutMs = 10_000, opts: { oob?: boolean } = {}): Promise<QmpClient> {
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
        const caps = await client.greeting();
        const oob = !!opts.oob && caps.includes('oob');
        await client.execute('qmp_capabilities', oob ? { enable: ['oob'] } : undefined);
        client.oob = oob;
        return client;
      } catch (e) {
        lastErr = e;
        await sleep(50);
      }
    }
    throw new Error(`cannot connect to QMP socket ${path}: ${(lastErr as Error)?.message ?? 'timeout'}`);
  }

  private greetingWaiter?: { resolve: (caps: string[]) => void; reject: (e: Error) => void };

  /** Resolves with the capabilities QEMU offers in its greeting. */
  private greeting(): Promise<string[]> {
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

  /**
   * Runs one command out of band (`exec-oob`): QEMU runs it at once in its monitor thread,
   * not behind in-band commands. Only for commands QEMU marks `allow-oob`; needs `oob`.
   */
  executeOob<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) return Promise.reject(new Error(`QMP ${command}: connection to QEMU is closed`));
    if (!this.oob) return Promise.reject(new Error(`QMP ${command}: out-of-band execution is not enabled`));
    const id = `oob-${++this.oobSeq}`;
    return new Promise<T>((resolve, reject) => {
      this.oobPending.set(id, { command, resolve: resolve as (v: unknown) => void, reject });
      this.sock.write(JSON.stringify(args ? { 'exec-oob': command, arguments: args, id } : { 'exec-oob': command, id }) + '\n');
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
        const caps = (msg.QMP as { capabilities?: unknown } | undefined)?.capabilities;
        this.greetingWaiter?.resolve(Array.isArray(caps) ? caps.map(String) : []);
        this.greetingWaiter = undefined;
      } else if ('event' in msg) {
        this.emit('event', msg as unknown as QmpEvent);
      } else if ('return' in msg || 'error' in msg) {
        // An out-of-band reply carries its id; in-band replies come in order.
        let p: Pending | undefined;
        if (typeof msg.id === 'string' && this.oobPending.has(msg.id)) {
          p = this.oobPending.get(msg.id)!;
          this.oobPending.delete(msg.id);
        } else {
          p = this.queue.shift();
        }
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
    for (const p of this.oobPending.values()) p.reject(new Error(`QMP ${p.command}: ${err.message}`));
    this.oobPending.clear();
    this.emit('close');
  }
}
