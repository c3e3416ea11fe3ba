// The sidecars' control channel: JSON lines over TCP, requests answered by id, and heartbeats.
//
//   → {"id":1,"op":"prepare","vm":"a",...}     ← {"id":1,"ok":true,"result":{...}}
//   → {"hb":17}                                   (every heartbeat interval, both ways)
//   ← {"hbAck":17}                                (its echo: 'rtt' is emitted with the round trip, ms)
//   → {"event":"...","data":{...}}                (one-way notices)
//
// Any line from the other side counts as a heartbeat. When none arrived for `timeoutMs`
// the peer is suspected ('suspect' is emitted once); a closed connection is suspected at once.
//
// With a TlsConfig (tls.ts) the channel is mutual TLS: both ends verify the other's certificate
// against the CA and its names against --tls-allow; a refused peer gets one {"refused":...}
// line and the connection closes. Without one, only loopback addresses are used (the caller
// checks, see requireTlsOrLoopback).
import { connect, createServer, type Server, type Socket } from 'node:net';
import * as tls from 'node:tls';
import { EventEmitter } from 'node:events';
import { isLoopback, refusal, TLS_HINT, type TlsConfig } from './tls.js';

/** A line longer than this closes the connection (the protocol's messages are small). */
export const MAX_LINE = 1 << 20;
/** Unanswered heartbeats remembered for their RTT. */
const HB_KEEP = 64;

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
  /** When each unanswered heartbeat left (by its number): the RTT is timed here, never from a time the other side sends. */
  private readonly hbSent = new Map<number, number>();
  private lastSeen = performance.now();
  private suspected = false;
  /** Why the connection ended, when the other side or the socket said so. */
  private endReason = '';
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
    sock.on('error', (e) => {
      this.endReason ||= e.message;
    });
  }

  /** The other side's address as connected (the authenticated peer's, with TLS). */
  get remoteAddress(): string {
    return (this.sock.remoteAddress ?? '').replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/, '$1');
  }

  static connect(addr: string, handler?: Handler, timeoutMs = 5000, tlsConfig?: TlsConfig): Promise<Peer> {
    const { host, port } = parseAddr(addr);
    if (!tlsConfig && !isLoopback(host)) {
      return Promise.reject(new Error(`${addr} is not a loopback address and TLS is off: ${TLS_HINT} (the control channel is never used in clear over a network)`));
    }
    return new Promise((resolve, reject) => {
      const s = tlsConfig
        ? tls.connect({ host, port, cert: tlsConfig.cert, key: tlsConfig.key, ca: tlsConfig.ca, rejectUnauthorized: true, minVersion: 'TLSv1.2' })
        : connect({ host, port });
      const timer = setTimeout(() => {
        s.destroy();
        reject(new Error(`cannot reach the sidecar at ${addr}: timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      s.once(tlsConfig ? 'secureConnect' : 'connect', () => {
        clearTimeout(timer);
        const why = tlsConfig ? refusal(s as tls.TLSSocket, tlsConfig) : undefined;
        if (why) {
          s.destroy();
          reject(new Error(`refusing the sidecar at ${addr}: ${why}`));
          return;
        }
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
    this.hbSent.clear();
    this.hbTimer = setInterval(() => {
      this.write({ hb: ++n });
      this.hbSent.set(n, performance.now());
      // A peer that never echoes (an older migsafe) must not grow the map.
      if (this.hbSent.size > HB_KEEP) this.hbSent.delete(this.hbSent.keys().next().value!);
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
    if (this.buf.length > MAX_LINE && !this.buf.slice(0, MAX_LINE + 1).includes('\n')) {
      this.endReason = `a line longer than ${MAX_LINE} bytes`;
      this.buf = '';
      this.close();
      return;
    }
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
      if (typeof m !== 'object' || m === null || Array.isArray(m)) continue;
      if ('hb' in m) {
        if (Number.isSafeInteger(m.hb)) this.write({ hbAck: m.hb });
        continue;
      }
      if ('hbAck' in m) {
        const sent = typeof m.hbAck === 'number' ? this.hbSent.get(m.hbAck) : undefined;
        if (sent !== undefined) {
          this.hbSent.delete(m.hbAck as number);
          this.emit('rtt', performance.now() - sent);
        }
        continue;
      }
      if (typeof m.refused === 'string') {
        this.endReason = `refused by the other side: ${m.refused.slice(0, 500)}`;
        continue;
      }
      if (typeof m.event === 'string') {
        this.emit('event', m.event, m.data ?? {});
        continue;
      }
      if ('ok' in m && typeof m.id === 'number') {
        const p = this.pending.get(m.id);
        if (!p) continue;
        this.pending.delete(m.id);
        if (m.ok === true) p.resolve(m.result);
        else p.reject(new Error(String(m.error).slice(0, 2000)));
        continue;
      }
      if (typeof m.op === 'string' && typeof m.id === 'number' && Number.isSafeInteger(m.id)) {
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
    const why = this.endReason ? ` (${this.endReason})` : '';
    for (const p of this.pending.values()) p.reject(new Error(`connection to the other sidecar closed${why}`));
    this.pending.clear();
    this.emit('close');
    this.suspect(`connection closed${why}`);
  }
}

/** HOST:PORT (an IPv6 address in brackets: [::1]:7400); port 1..65535. */
export function parseAddr(addr: string): { host: string; port: number } {
  const i = addr.lastIndexOf(':');
  const portText = addr.slice(i + 1);
  const port = Number(portText);
  const host = addr.slice(0, i).replace(/^\[(.*)\]$/, '$1');
  if (i <= 0 || !/^\d{1,5}$/.test(portText) || port <= 0 || port > 65535 || !host || /[\s/]/.test(host)) {
    throw new Error(`"${addr}" is not HOST:PORT (port 1..65535)`);
  }
  return { host, port };
}

export interface ListenOptions {
  tls?: TlsConfig;
  /** Where refused connections are reported. */
  log?: (msg: string) => void;
}

/** Refuses a non-loopback address when TLS is off: the channel is never in clear on a network. */
export function requireTlsOrLoopback(addr: string, tlsConfig: TlsConfig | undefined, what: string): void {
  if (tlsConfig || isLoopback(parseAddr(addr).host)) return;
  throw new Error(`${what} ${addr} is not a loopback address and TLS is off: ${TLS_HINT} (without TLS an agent listens on loopback only)`);
}

export function listen(addr: string, onPeer: (p: Peer) => void, handler: Handler, o: ListenOptions = {}): Promise<Server> {
  const { host, port } = parseAddr(addr);
  requireTlsOrLoopback(addr, o.tls, '--listen');
  const log = o.log ?? (() => {});
  const cfg = o.tls;
  // requestCert with the verdict checked here (refusal: the CA's signature first, then
  // --tls-allow) before the socket reaches a Peer: Node's rejectUnauthorized would drop the
  // connection without saying why, and the log must say why.
  const srv = cfg
    ? tls.createServer(
        { cert: cfg.cert, key: cfg.key, ca: cfg.ca, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.2', handshakeTimeout: 10_000 },
        (s) => {
          const why = refusal(s, cfg);
          if (why) {
            log(`refused a control connection from ${s.remoteAddress}: ${why}`);
            s.on('error', () => {});
            s.end(JSON.stringify({ refused: why }) + '\n');
            setTimeout(() => s.destroy(), 1000).unref();
            return;
          }
          onPeer(new Peer(s, handler));
        },
      )
    : createServer((s) => onPeer(new Peer(s, handler)));
  if (cfg) {
    srv.on('tlsClientError', (e: Error & { reason?: string }, s: tls.TLSSocket) =>
      log(`refused a control connection from ${s.remoteAddress ?? '?'}: TLS handshake failed: ${e.reason ?? e.message}`),
    );
  }
  return new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(port, host, () => resolve(srv));
  });
}
