// The sidecars' control channel: JSON lines over TCP, requests answered by id, and heartbeats.
//
//   → {"id":1,"op":"prepare","vm":"a",...}     ← {"id":1,"ok":true,"result":{...}}
//   → {"hb":17}                                   (every heartbeat interval, both ways)
//   → {"event":"...","data":{...}}                (one-way notices)
//
// Any line from the other side counts as a heartbeat. When none arrived for `timeoutMs`
// the peer is suspected ('suspect' is emitted once); a closed connection is suspected at once.
import { connect, createServer, type Server, type Socket } from 'node:net';
import { EventEmitter } from 'node:events';

export interface HeartbeatOptions {
  intervalMs: number;
  timeoutMs: number;
}

export type Handler = (msg: Record<string, unknown>, peer: Peer) => Promise<unknown>;

export class Peer extends EventEmitter {
  private buf = '';
  private nextId = 1;
  private pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private hbTimer?: NodeJS.Timeout;
  private lastSeen = performance.now();
  private suspected = false;
  closed = false;

  constructor(
    readonly sock: Socket,
    private readonly handler?: Handler,
  ) {
    super();
    sock.setNoDelay(true);
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('close', () => this.onClose());
    sock.on('error', () => {});
  }

  static connect(addr: string, handler?: Handler, timeoutMs = 5000): Promise<Peer> {
    const { host, port } = parseAddr(addr);
    return new Promise((resolve, reject) => {
      const s = connect({ host, port });
      const timer = setTimeout(() => {
        s.destroy();
        reject(new Error(`cannot reach the sidecar at ${addr}: timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        resolve(new Peer(s, handler));
      });
      s.once('error', (e) => {
        clearTimeout(timer);
        reject(new Error(`cannot reach the sidecar at ${addr}: ${e.message}`));
      });
    });
  }

  /** Starts heartbeats and the failure detector. */
  startHeartbeat(o: HeartbeatOptions): void {
    this.stopHeartbeat();
    this.lastSeen = performance.now();
    let n = 0;
    this.hbTimer = setInterval(() => {
      this.write({ hb: ++n });
      if (!this.suspected && performance.now() - this.lastSeen > o.timeoutMs) this.suspect('heartbeat timeout');
    }, o.intervalMs);
  }

  stopHeartbeat(): void {
    if (this.hbTimer) clearInterval(this.hbTimer);
    this.hbTimer = undefined;
  }

  /** ms since anything arrived from the other side. */
  get silenceMs(): number {
    return performance.now() - this.lastSeen;
  }

  request<T = unknown>(op: string, args: Record<string, unknown> = {}, timeoutMs = 60_000): Promise<T> {
    if (this.closed) return Promise.reject(new Error(`${op}: connection to the other sidecar is closed`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${op}: no answer from the other sidecar in ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.write({ id, op, ...args });
    });
  }

  notify(event: string, data: Record<string, unknown> = {}): void {
    this.write({ event, data });
  }

  close(): void {
    this.stopHeartbeat();
    this.sock.destroy();
  }

  private write(m: unknown): void {
    if (this.closed) return;
    this.sock.write(JSON.stringify(m) + '\n');
  }

  private suspect(why: string): void {
    if (this.suspected) return;
    this.suspected = true;
    this.emit('suspect', why);
  }

  private onData(d: string): void {
    this.lastSeen = performance.now();
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      if (!line.trim()) continue;
      let m: Record<string, unknown>;
      try {
        m = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      if ('hb' in m) continue;
      if ('event' in m) {
        this.emit('event', m.event, m.data ?? {});
        continue;
      }
      if ('ok' in m && typeof m.id === 'number') {
        const p = this.pending.get(m.id);
        if (!p) continue;
        this.pending.delete(m.id);
        if (m.ok) p.resolve(m.result);
        else p.reject(new Error(String(m.error)));
        continue;
      }
      if (typeof m.op === 'string' && typeof m.id === 'number') {
        const id = m.id;
        const h = this.handler;
        if (!h) {
          this.write({ id, ok: false, error: `no handler for ${m.op}` });
          continue;
        }
        h(m, this).then(
          (result) => this.write({ id, ok: true, result: result ?? null }),
          (e: Error) => this.write({ id, ok: false, error: e.message }),
        );
      }
    }
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopHeartbeat();
    for (const p of this.pending.values()) p.reject(new Error('connection to the other sidecar closed'));
    this.pending.clear();
    this.emit('close');
    this.suspect('connection closed');
  }
}

export function parseAddr(addr: string): { host: string; port: number } {
  const i = addr.lastIndexOf(':');
  const port = Number(addr.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new Error(`"${addr}" is not HOST:PORT`);
  }
  return { host: addr.slice(0, i), port };
}

export function listen(addr: string, onPeer: (p: Peer) => void, handler: Handler): Promise<Server> {
  const { host, port } = parseAddr(addr);
  const srv = createServer((s) => onPeer(new Peer(s, handler)));
  return new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(port, host, () => resolve(srv));
  });
}
