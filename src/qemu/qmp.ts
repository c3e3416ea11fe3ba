// A small QMP client: one socket, commands answered in order, events to listeners; with
// `{ oob: true }` also out-of-band commands (`exec-oob`, answered by id, run by QEMU's monitor
// thread even while the main loop is stuck — e.g. in `stop` waiting for a vCPU blocked on a
// post-copy page that will never come).
//
// What QEMU sends is checked, not trusted: every command has a timeout (a command that timed
// out keeps its place in the queue, so its late reply is dropped instead of answering the next
// command); a line that is not a QMP message, a reply to no command and a line longer than
// MAX_LINE_BYTES are protocol errors that fail every pending command and close the connection
// (skipping a line would hand the following replies to the wrong commands).
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

/** QEMU did not answer a command in time. */
export class QmpTimeoutError extends Error {
  override name = 'QmpTimeoutError';
  constructor(
    readonly command: string,
    readonly timeoutMs: number,
    message = `QMP ${command}: no reply from QEMU within ${timeoutMs} ms (QEMU busy or stuck)`,
  ) {
    super(message);
  }
}

/** QEMU sent something that is not QMP: the connection is closed. */
export class QmpProtocolError extends Error {
  override name = 'QmpProtocolError';
}

/** Default time a command may take before it fails with QmpTimeoutError. */
export const DEFAULT_COMMAND_TIMEOUT_MS = 10_000;
/** Longest line QEMU may send; QMP replies and events are a few KiB. */
export const MAX_LINE_BYTES = 16 << 20;

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer?: NodeJS.Timeout;
  /** Timed out: its promise is settled, its reply (if it comes) is dropped. */
  timedOut?: boolean;
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpConnectOptions {
  oob?: boolean;
  /** Timeout of every command unless execute() says otherwise (default DEFAULT_COMMAND_TIMEOUT_MS). */
  commandTimeoutMs?: number;
  /** Longest line accepted (default MAX_LINE_BYTES). */
  maxLineBytes?: number;
}

export interface ExecuteOptions {
  /** Overrides the client's command timeout; 0: wait as long as it takes. */
  timeoutMs?: number;
}

const clip = (s: string) => (s.length > 120 ? `${s.slice(0, 120)}… (${s.length} characters)` : s);

/** Connected, capabilities negotiated. Emits 'event' (QmpEvent) and 'close'. */
export class QmpClient extends EventEmitter {
  private buf = '';
  private queue: Pending[] = [];
  private oobPending = new Map<string, Pending>();
  /** Ids of out-of-band commands that timed out: their late replies are dropped. */
  private oobLate = new Set<string>();
  private oobSeq = 0;
  private closed = false;
  /** Why the connection was closed by this side (a protocol error), if it was. */
  private failure?: QmpProtocolError;
  /** QEMU offered out-of-band execution and it was enabled (connect with `{ oob: true }`). */
  oob = false;
  private readonly commandTimeoutMs: number;
  private readonly maxLine: number;

  private constructor(
    private readonly sock: Socket,
    opts: QmpConnectOptions,
  ) {
    super();
    this.commandTimeoutMs = opts.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    this.maxLine = opts.maxLineBytes ?? MAX_LINE_BYTES;
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('close', () => this.onClose());
    sock.on('error', () => {
      /* reported through 'close' and rejected commands */
    });
  }

  /**
   * Connects to a QMP unix socket, retrying until `timeoutMs` while the socket refuses or drops
   * the connection (QEMU may still be starting). No greeting in time, or a greeting that is not
   * QMP, fails at once.
   */
  static async connect(path: string, timeoutMs = 10_000, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    let lastErr: unknown;
    while (Date.now() < deadline) {
      let client: QmpClient | undefined;
      try {
        const sock = await new Promise<Socket>((resolve, reject) => {
          const s = connect(path);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        client = new QmpClient(sock, opts);
        const caps = await client.greeting(Math.max(1, deadline - Date.now()));
        const oob = !!opts.oob && caps.includes('oob');
        await client.execute('qmp_capabilities', oob ? { enable: ['oob'] } : undefined);
        client.oob = oob;
        return client;
      } catch (e) {
        client?.close();
        if (e instanceof QmpProtocolError || e instanceof QmpTimeoutError) {
          throw new Error(`QMP socket ${path}: ${(e as Error).message}`);
        }
        lastErr = e;
        await sleep(50);
      }
    }
    throw new Error(`cannot connect to QMP socket ${path}: ${(lastErr as Error)?.message ?? 'timeout'}`);
  }

  private greetingWaiter?: { resolve: (caps: string[]) => void; reject: (e: Error) => void };

  /** Resolves with the capabilities QEMU offers in its greeting. */
  private greeting(timeoutMs: number): Promise<string[]> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.greetingWaiter = undefined;
        reject(new QmpTimeoutError('greeting', timeoutMs, `no QMP greeting within ${timeoutMs} ms (not QEMU, or another client holds the monitor)`));
      }, timeoutMs);
      const done = () => clearTimeout(timer);
      this.greetingWaiter = {
        resolve: (c) => (done(), resolve(c)),
        reject: (e) => (done(), reject(e)),
      };
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private closedError(command: string): Error {
    return new Error(`QMP ${command}: connection to QEMU is closed` + (this.failure ? ` (${this.failure.message})` : ''));
  }

  /** Arms a command's timeout; `onTimeout` takes it out of the books it is in. */
  private arm(p: Pending, timeoutMs: number, onTimeout: () => void): void {
    if (timeoutMs <= 0) return;
    p.timer = setTimeout(() => {
      p.timedOut = true;
      onTimeout();
      p.reject(new QmpTimeoutError(p.command, timeoutMs));
    }, timeoutMs);
  }

  /** Runs one QMP command and resolves with its `return` value (QmpTimeoutError if none comes in time). */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: ExecuteOptions = {}): Promise<T> {
    if (this.closed) return Promise.reject(this.closedError(command));
    return new Promise<T>((resolve, reject) => {
      const p: Pending = { command, resolve: resolve as (v: unknown) => void, reject };
      // A command that timed out stays queued: its late reply is QEMU's next in-band reply.
      this.arm(p, opts.timeoutMs ?? this.commandTimeoutMs, () => {});
      this.queue.push(p);
      this.sock.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
    });
  }

  /**
   * Runs one command out of band (`exec-oob`): QEMU runs it at once in its monitor thread,
   * not behind in-band commands. Only for commands QEMU marks `allow-oob`; needs `oob`.
   */
  executeOob<T = unknown>(command: string, args?: Record<string, unknown>, opts: ExecuteOptions = {}): Promise<T> {
    if (this.closed) return Promise.reject(this.closedError(command));
    if (!this.oob) return Promise.reject(new Error(`QMP ${command}: out-of-band execution is not enabled`));
    const id = `oob-${++this.oobSeq}`;
    return new Promise<T>((resolve, reject) => {
      const p: Pending = { command, resolve: resolve as (v: unknown) => void, reject };
      this.arm(p, opts.timeoutMs ?? this.commandTimeoutMs, () => {
        this.oobPending.delete(id);
        this.oobLate.add(id);
      });
      this.oobPending.set(id, p);
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
        reject(new Error(`QEMU closed QMP while waiting for ${name}` + (this.failure ? ` (${this.failure.message})` : '')));
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

  /** Fails every pending command with `err` and closes the connection. */
  private fail(err: QmpProtocolError): void {
    if (this.closed || this.failure) return;
    this.failure = err;
    this.buf = '';
    this.sock.destroy();
    this.onClose();
  }

  private onData(d: string): void {
    if (this.failure) return;
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (nl > this.maxLine) return this.fail(new QmpProtocolError(`QEMU sent a QMP line of ${nl} characters, more than ${this.maxLine}`));
      if (!line) continue;
      const err = this.onLine(line);
      if (err) return this.fail(err);
    }
    if (this.buf.length > this.maxLine) {
      this.fail(new QmpProtocolError(`QEMU sent a QMP line longer than ${this.maxLine} characters without an end`));
    }
  }

  /** Handles one line; returns the protocol error it is, if any. */
  private onLine(line: string): QmpProtocolError | undefined {
    let msg: unknown;
    try {
      msg = JSON.parse(line);
    } catch (e) {
      return new QmpProtocolError(`QEMU sent a malformed QMP line (${(e as Error).message}): ${clip(line)}`);
    }
    if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) {
      return new QmpProtocolError(`QEMU sent a QMP line that is not an object: ${clip(line)}`);
    }
    const m = msg as Record<string, unknown>;
    if ('QMP' in m) {
      const caps = (m.QMP as { capabilities?: unknown } | undefined)?.capabilities;
      this.greetingWaiter?.resolve(Array.isArray(caps) ? caps.map(String) : []);
      this.greetingWaiter = undefined;
      return undefined;
    }
    if ('event' in m) {
      if (typeof m.event !== 'string') return new QmpProtocolError(`QEMU sent an event without a name: ${clip(line)}`);
      this.emit('event', m as unknown as QmpEvent);
      return undefined;
    }
    if (!('return' in m) && !('error' in m)) return new QmpProtocolError(`QEMU sent a QMP line that is no reply, event or greeting: ${clip(line)}`);
    // An out-of-band reply carries its id; in-band replies come in order (we send no ids).
    let p: Pending | undefined;
    if (m.id !== undefined) {
      const id = String(m.id);
      if (this.oobLate.delete(id)) return undefined; // the late reply of a command that timed out
      p = this.oobPending.get(id);
      if (!p) return new QmpProtocolError(`QEMU sent a reply for an unknown id ${clip(JSON.stringify(m.id))}`);
      this.oobPending.delete(id);
    } else {
      p = this.queue.shift();
      if (!p) return new QmpProtocolError(`QEMU sent a reply to no command: ${clip(line)}`);
    }
    clearTimeout(p.timer);
    if (p.timedOut) return undefined;
    if ('error' in m) {
      const err = (m.error ?? {}) as { class?: unknown; desc?: unknown };
      p.reject(new QmpError(p.command, String(err.class ?? 'GenericError'), String(err.desc ?? '(no description)')));
    } else {
      p.resolve(m.return);
    }
    return undefined;
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    const why = this.failure?.message ?? 'connection to QEMU (QMP) closed';
    this.greetingWaiter?.reject(this.failure ?? new Error(why));
    this.greetingWaiter = undefined;
    const pending = [...this.queue.splice(0), ...this.oobPending.values()];
    this.oobPending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      if (p.timedOut) continue;
      p.reject(this.failure ? new QmpProtocolError(`QMP ${p.command}: ${why}`) : new Error(`QMP ${p.command}: ${why}`));
    }
    this.emit('close');
  }
}
