// Prometheus metrics (prom-client) for `--metrics ADDR:PORT`: names follow the ecosystem's
// conventions (prefix migsafe_, base units, _seconds/_bytes/_total), every series has a `vm`
// label. The checkpoint loop, the recovery and the agent report here; nothing is measured twice.
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** What a committed round reports (a subset of src/checkpoint's RoundStat and VersionMeta). */
export interface RoundReport {
  kind: 'fic' | 'ric';
  pauseMs: number;
  replicationMs: number;
  commitMs: number;
  pages: number;
  bytesRaw: number;
  bytesStored: number;
  committedAt: number;
}

/** Phases of a recovery from the store, in ms. */
export interface RecoveryReport {
  loadMs: number;
  /** Writing the RAM file (recovery from the store; a live recovery has no such phase). */
  writeMs?: number;
  startMs: number;
  totalMs: number;
}

// Pauses are milliseconds to a few seconds; rounds up to tens of seconds (a first full checkpoint).
const PAUSE_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
const ROUND_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
// Heartbeats: sub-millisecond on a LAN, up to the failure detector's timeout (1.5 s by default).
const RTT_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];
// A packet is held from when the guest sent it to the commit of the round after: up to an interval plus a round.
const HOLD_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export class Metrics {
  readonly registry = new Registry();
  private readonly lastCommit = new Map<string, number>();
  private readonly gates = new Map<string, () => number>();
  private readonly leases = new Map<string, () => number>();

  private readonly roundSeconds = new Histogram({
    name: 'migsafe_checkpoint_round_duration_seconds',
    help: 'From the start of a checkpoint round to its commit',
    labelNames: ['vm', 'kind'],
    buckets: ROUND_BUCKETS,
    registers: [this.registry],
  });
  private readonly pauseSeconds = new Histogram({
    name: 'migsafe_checkpoint_pause_seconds',
    help: 'How long the VM was paused for stage 2 of a round',
    labelNames: ['vm', 'kind'],
    buckets: PAUSE_BUCKETS,
    registers: [this.registry],
  });
  private readonly commitSeconds = new Histogram({
    name: 'migsafe_checkpoint_commit_seconds',
    help: 'From the last write of a version to its commit being acknowledged by the store',
    labelNames: ['vm', 'kind'],
    buckets: PAUSE_BUCKETS,
    registers: [this.registry],
  });
  private readonly pages = new Counter({
    name: 'migsafe_checkpoint_pages_total',
    help: 'Pages sent in committed versions',
    labelNames: ['vm', 'kind'],
    registers: [this.registry],
  });
  private readonly bytesRaw = new Counter({
    name: 'migsafe_checkpoint_raw_bytes_total',
    help: 'Guest page bytes of committed versions (4096 per page)',
    labelNames: ['vm', 'kind'],
    registers: [this.registry],
  });
  private readonly bytesStored = new Counter({
    name: 'migsafe_checkpoint_stored_bytes_total',
    help: 'Bytes of page frames written to the store for committed versions',
    labelNames: ['vm', 'kind'],
    registers: [this.registry],
  });
  private readonly committed = new Counter({
    name: 'migsafe_checkpoint_versions_committed_total',
    help: 'Versions committed',
    labelNames: ['vm', 'kind'],
    registers: [this.registry],
  });
  private readonly failed = new Counter({
    name: 'migsafe_checkpoint_rounds_failed_total',
    help: 'Rounds that ended without a commit',
    labelNames: ['vm', 'kind'],
    registers: [this.registry],
  });
  private readonly recoverySeconds = new Gauge({
    name: 'migsafe_recovery_duration_seconds',
    help: 'The last recovery from the store, by phase (load: read and verify; start: QEMU up and running; total)',
    labelNames: ['vm', 'phase'],
    registers: [this.registry],
  });
  private readonly rttSeconds = new Histogram({
    name: 'migsafe_heartbeat_rtt_seconds',
    help: "Round trip of a heartbeat to the other agent of a migration and its echo",
    labelNames: ['vm', 'peer'],
    buckets: RTT_BUCKETS,
    registers: [this.registry],
  });
  private readonly holdSeconds = new Histogram({
    name: 'migsafe_gate_hold_seconds',
    help: 'How long the output gate held each released guest packet (held until the round explaining it committed)',
    labelNames: ['vm'],
    buckets: HOLD_BUCKETS,
    registers: [this.registry],
  });
  private readonly recoveries = new Counter({
    name: 'migsafe_recoveries_total',
    help: 'VMs rebuilt from the store',
    labelNames: ['vm'],
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry });
    const self = this;
    new Gauge({
      name: 'migsafe_checkpoint_lag_seconds',
      help: 'Age of the newest version this process committed',
      labelNames: ['vm'],
      registers: [this.registry],
      collect() {
        for (const [vm, at] of self.lastCommit) this.set({ vm }, Math.max(0, (Date.now() - at) / 1000));
      },
    });
    new Gauge({
      name: 'migsafe_gate_held_packets',
      help: 'Guest packets the output gate holds until their round commits',
      labelNames: ['vm'],
      registers: [this.registry],
      collect() {
        for (const [vm, f] of self.gates) this.set({ vm }, f());
      },
    });
    new Gauge({
      name: 'migsafe_lease_token',
      help: "The fencing token of this host's lease on the VM (0: not held)",
      labelNames: ['vm'],
      registers: [this.registry],
      collect() {
        for (const [vm, f] of self.leases) this.set({ vm }, f());
      },
    });
  }

  round(vm: string, r: RoundReport): void {
    const l = { vm, kind: r.kind };
    this.roundSeconds.observe(l, r.replicationMs / 1000);
    this.pauseSeconds.observe(l, r.pauseMs / 1000);
    this.commitSeconds.observe(l, r.commitMs / 1000);
    this.pages.inc(l, r.pages);
    this.bytesRaw.inc(l, r.bytesRaw);
    this.bytesStored.inc(l, r.bytesStored);
    this.committed.inc(l);
    this.lastCommit.set(vm, r.committedAt);
  }

  roundFailed(vm: string, kind: 'fic' | 'ric'): void {
    this.failed.inc({ vm, kind });
  }

  recovered(vm: string, r: RecoveryReport): void {
    this.recoveries.inc({ vm });
    this.recoverySeconds.set({ vm, phase: 'load' }, r.loadMs / 1000);
    if (r.writeMs !== undefined) this.recoverySeconds.set({ vm, phase: 'write' }, r.writeMs / 1000);
    this.recoverySeconds.set({ vm, phase: 'start' }, r.startMs / 1000);
    this.recoverySeconds.set({ vm, phase: 'total' }, r.totalMs / 1000);
  }

  /** A heartbeat's round trip to `peer` (its host name) during a migration of `vm`. */
  heartbeatRtt(vm: string, peer: string, seconds: number): void {
    this.rttSeconds.observe({ vm, peer }, seconds);
  }

  /** A packet the gate released after holding it this long. */
  gateHold(vm: string, seconds: number): void {
    this.holdSeconds.observe({ vm }, seconds);
  }

  /** Reads the gate's held packets at each scrape. */
  watchGate(vm: string, held: () => number): void {
    this.gates.set(vm, held);
  }

  /** Reads the lease's token at each scrape. */
  watchLease(vm: string, token: () => number): void {
    this.leases.set(vm, token);
  }
}

/** `ADDR:PORT` (port 0: any free port) → its parts, or an error that says what is wrong. */
export function parseListen(s: string, what = '--metrics'): { host: string; port: number } {
  const i = s.lastIndexOf(':');
  const host = i > 0 ? s.slice(0, i).replace(/^\[(.*)\]$/, '$1') : '';
  const port = Number(s.slice(i + 1));
  if (!host || i < 0 || !/^\d+$/.test(s.slice(i + 1)) || port > 65535) {
    throw new Error(`${what} must be ADDR:PORT, e.g. 127.0.0.1:9464 (got ${JSON.stringify(s)})`);
  }
  return { host, port };
}

export interface MetricsServer {
  /** http://ADDR:PORT/metrics, with the port actually bound. */
  url: string;
  close(): Promise<void>;
}

/** Serves the registry as Prometheus text at /metrics. */
export async function serveMetrics(metrics: Metrics, listen: string): Promise<MetricsServer> {
  const { host, port } = parseListen(listen);
  const server: Server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('migsafe: metrics are at /metrics\n');
      return;
    }
    metrics.registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text),
      (e: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${e.message}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(new Error(`--metrics ${listen}: ${e.message}`)));
    server.listen(port, host, () => resolve());
  });
  const bound = server.address();
  const actualPort = typeof bound === 'object' && bound ? bound.port : port;
  const shown = host.includes(':') ? `[${host}]` : host;
  return {
    url: `http://${shown}:${actualPort}/metrics`,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}
