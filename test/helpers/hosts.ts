// Three hosts on one machine for migration tests: network namespaces `src`, `dst`, `sto`
// (source, destination, store) joined by veth pairs to one bridge in a fourth namespace.
// Addresses come from a private /24 that exists only inside these namespaces. Names are
// unique per run (prefix + pid + random) so a crashed run never blocks the next one, and
// teardown removes everything even when the test failed.
import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { processAlive } from '../../src/util/process.js';
import { gateNetdev } from '../../src/ha/gate.js';
import { replicatedStore, type ReplicatedStore } from './store-failover.js';
import { guestQemuArgs } from './guest.js';
import { logText } from './cli.js';

export type HostName = 'src' | 'dst' | 'sto';
export const HOSTS: readonly HostName[] = ['src', 'dst', 'sto'];

export interface Host {
  name: HostName;
  /** Network namespace name. */
  ns: string;
  /** Address on the test network (no prefix length). */
  ip: string;
}

export interface Hosts {
  /** Common prefix of this run's namespaces. */
  id: string;
  src: Host;
  dst: Host;
  sto: Host;
  /** Namespace holding the bridge. */
  bridgeNs: string;
  subnet: string;
  /** argv prefix that runs a command inside a host's namespace. */
  exec(h: Host | HostName): string[];
  /** Spawns a process inside a host's namespace. */
  spawn(h: Host | HostName, argv: string[], opts?: SpawnOptions): ChildProcess;
  /** Runs a command inside a host's namespace to its end, returns stdout. */
  run(h: Host | HostName, argv: string[]): string;
  /** Cuts the host's link to the bridge (the veth's bridge end goes down). */
  cut(h: Host | HostName): void;
  /** Brings the host's link back. */
  heal(h: Host | HostName): void;
  /** Kills every process still inside the namespaces, removes them. Idempotent. */
  teardown(): void;
}

const PREFIX = 'mst';

function ip(args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** GET `url` from inside the host's namespace (its loopback is its own); the body. */
export function fetchIn(host: Host, url: string): string {
  const script = `fetch(${JSON.stringify(url)}).then(async (r) => { if (r.status !== 200) throw new Error('HTTP ' + r.status); process.stdout.write(await r.text()); })`;
  return execFileSync('ip', ['netns', 'exec', host.ns, process.execPath, '-e', script], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function pidsIn(ns: string): number[] {
  try {
    return ip(['netns', 'pids', ns])
      .split('\n')
      .map((s) => Number(s.trim()))
      .filter((n) => n > 0);
  } catch {
    return [];
  }
}

function removeNs(ns: string): void {
  for (const pid of pidsIn(ns)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  try {
    ip(['netns', 'del', ns]);
  } catch {
    /* already gone */
  }
}

/** Removes namespaces left by earlier runs of this harness whose process is dead. */
export function removeStaleHosts(): void {
  let list = '';
  try {
    list = ip(['netns', 'list']);
  } catch {
    return;
  }
  for (const line of list.split('\n')) {
    const ns = line.split(' ')[0] ?? '';
    const m = new RegExp(`^${PREFIX}(\\d+)x[a-z0-9]+-`).exec(ns);
    if (m && !processAlive(Number(m[1]))) removeNs(ns);
  }
  // Run directories of agents of dead runs (guest RAM files in /dev/shm).
  try {
    for (const f of readdirSync('/dev/shm')) {
      const m = new RegExp(`^${PREFIX}(\\d+)x[a-z0-9]+-`).exec(f);
      if (m && !processAlive(Number(m[1]))) rmSync(join('/dev/shm', f), { recursive: true, force: true });
    }
  } catch {
    /* no /dev/shm */
  }
}

const live = new Set<Hosts>();
let hookInstalled = false;

/**
 * Builds the three hosts. `octet` picks the /24 (10.<octet>.<random>.0/24 by default).
 * Always call teardown() (or pass `t`, whose teardown is used).
 */
export function createHosts(opts: { t?: { teardown(fn: () => unknown): void } } = {}): Hosts {
  removeStaleHosts();
  const id = `${PREFIX}${process.pid}x${Math.random().toString(36).slice(2, 6)}`;
  const third = 1 + Math.floor(Math.random() * 250);
  const subnet = `10.231.${third}.0/24`;
  const addr = (n: number) => `10.231.${third}.${n}`;
  const mk = (name: HostName, n: number): Host => ({ name, ns: `${id}-${name}`, ip: addr(n) });
  const hosts = { src: mk('src', 1), dst: mk('dst', 2), sto: mk('sto', 3) };
  const bridgeNs = `${id}-br`;
  const created: string[] = [];
  const get = (h: Host | HostName): Host => (typeof h === 'string' ? hosts[h] : h);
  let torn = false;
  const self: Hosts = {
    id,
    ...hosts,
    bridgeNs,
    subnet,
    exec: (h) => ['ip', 'netns', 'exec', get(h).ns],
    spawn: (h, argv, o) => spawn('ip', ['netns', 'exec', get(h).ns, ...argv], o ?? { stdio: 'ignore' }),
    run: (h, argv) => ip(['netns', 'exec', get(h).ns, ...argv]),
    cut: (h) => {
      ip(['-n', bridgeNs, 'link', 'set', `v-${get(h).name}`, 'down']);
    },
    heal: (h) => {
      ip(['-n', bridgeNs, 'link', 'set', `v-${get(h).name}`, 'up']);
    },
    teardown: () => {
      if (torn) return;
      torn = true;
      live.delete(self);
      for (const ns of created.reverse()) removeNs(ns);
    },
  };
  try {
    for (const ns of [bridgeNs, ...HOSTS.map((h) => hosts[h].ns)]) {
      ip(['netns', 'add', ns]);
      created.push(ns);
      ip(['-n', ns, 'link', 'set', 'lo', 'up']);
    }
    ip(['-n', bridgeNs, 'link', 'add', 'br0', 'type', 'bridge']);
    ip(['-n', bridgeNs, 'link', 'set', 'br0', 'up']);
    for (const name of HOSTS) {
      const h = hosts[name];
      ip(['-n', bridgeNs, 'link', 'add', `v-${name}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', h.ns]);
      ip(['-n', bridgeNs, 'link', 'set', `v-${name}`, 'master', 'br0']);
      ip(['-n', bridgeNs, 'link', 'set', `v-${name}`, 'up']);
      ip(['-n', h.ns, 'addr', 'add', `${h.ip}/24`, 'dev', 'eth0']);
      ip(['-n', h.ns, 'link', 'set', 'eth0', 'up']);
    }
  } catch (e) {
    self.teardown();
    throw new Error(`cannot build the test hosts (needs root and iproute2): ${(e as Error).message}`);
  }
  live.add(self);
  if (!hookInstalled) {
    hookInstalled = true;
    process.once('exit', () => {
      for (const h of [...live]) h.teardown();
    });
  }
  opts.t?.teardown(() => self.teardown());
  return self;
}

// ---------------------------------------------------------------- a migration cluster

import { mkdtempSync, mkdirSync, openSync, readFileSync, readdirSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startRedisServer, type RedisServerHandle } from '../../src/store/redis-server.js';
import { makeCa, makeCert } from './tls.js';

export const CLI_MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli', 'main.js');

export const AGENT_PORT = 7400;
export const PEER_PORT = 9999;

export interface AgentProc {
  host: HostName;
  child: ChildProcess;
  log: string;
  statusFile: string;
  runDir: string;
  addr: string;
  exited: Promise<number | string>;
}

export interface AgentStatus {
  host: string;
  vms: {
    vm: string;
    role: string;
    pid: number;
    head: number;
    ckpt: string | null;
    rounds: { version: number; pauseMs: number; replicationMs: number; kind: string; pausedAt?: number }[];
    failures: number;
    leaseToken?: number;
    events: string[];
    recoveries: { at: number; fromVersion: number; ms: number; why: string }[];
    thaws: { at: number; ms: number; fromVersion: number | null; shadow: 'kept' | 'store' | 'none' }[];
    frozen: boolean;
  }[];
}

export interface Cluster {
  hosts: Hosts;
  dir: string;
  redis: RedisServerHandle;
  redisDir: string;
  redisPort: number;
  redisUrl: string;
  peerLog: string;
  /**
   * The agents' control channel is mutual TLS: a CA of this run and a `--tls-dir` per host
   * (CN = host name, its address as IP SAN) and one for the operator (CN `operator`), which
   * cli() gives `migrate` unless the args name a --tls option themselves.
   */
  tlsDirs: Record<HostName | 'operator', string>;
  agents: Partial<Record<HostName, AgentProc>>;
  /** Starts the agent of a host (extra CLI options appended). */
  startAgent(h: HostName, extra?: string[]): AgentProc;
  status(h: HostName): AgentStatus | null;
  /** Restarts Redis on the store host (SIGKILL, then again on the same dir and port). */
  restartRedis(): Promise<void>;
  /** With `replicated`: the store host's primary, replicas and sentinels (redisUrl is then the sentinel URL). */
  store?: ReplicatedStore;
  /** The unix socket of the store's primary now (the test's way in). */
  storeSocket(): Promise<string>;
  /** Runs the CLI inside a host's namespace. */
  cli(h: HostName, args: string[], timeoutMs?: number): Promise<{ code: number | string; stdout: string; stderr: string }>;
  teardown(): Promise<void>;
}

const PEER_JS = `
const dgram = require('node:dgram'); const fs = require('node:fs');
const [port, file] = process.argv.slice(1);
const s = dgram.createSocket('udp4');
s.on('message', (m, r) => fs.appendFileSync(file, Date.now() + ' ' + r.address + ' ' + m.toString('latin1').trim() + '\\n'));
s.bind(Number(port), '0.0.0.0');
`;

/** Three hosts, Redis on the store host, a UDP peer on the store host. */
export async function createCluster(opts: { t?: { teardown(fn: () => unknown): void }; replicated?: boolean } = {}): Promise<Cluster> {
  const hosts = createHosts();
  const dir = mkdtempSync(join(tmpdir(), `migsafe-cluster-`));
  const redisDir = join(dir, 'redis');
  const redisPort = 6390;
  let redis: RedisServerHandle;
  try {
    redis = await startRedisServer({ dir: redisDir, port: redisPort, bind: hosts.sto.ip, appendfsync: 'always', wrap: hosts.exec('sto') });
  } catch (e) {
    hosts.teardown();
    throw e;
  }
  const store = opts.replicated ? await replicatedStore(hosts, dir, redis, redisPort).catch((e: Error) => (hosts.teardown(), Promise.reject(e))) : undefined;
  const peerLog = join(dir, 'peer.log');
  let tlsDirs: Cluster['tlsDirs'];
  try {
    const ca = makeCa(join(dir, 'tls', 'ca'));
    const leaf = (name: HostName) => makeCert(ca, join(dir, 'tls', name), { cn: name, ips: [hosts[name].ip, '127.0.0.1'] });
    tlsDirs = { src: leaf('src'), dst: leaf('dst'), sto: leaf('sto'), operator: makeCert(ca, join(dir, 'tls', 'operator'), { cn: 'operator' }) };
  } catch (e) {
    await redis.stop().catch(() => {});
    hosts.teardown();
    throw new Error(`cannot make the test certificates (needs openssl): ${(e as Error).message}`);
  }
  const peer = hosts.spawn('sto', [process.execPath, '-e', PEER_JS, String(PEER_PORT), peerLog]);
  const agents: Partial<Record<HostName, AgentProc>> = {};
  const c: Cluster = {
    hosts,
    dir,
    redis,
    redisDir,
    redisPort,
    redisUrl: store?.url ?? redis.url,
    store,
    storeSocket: async () => (store ? store.primarySocket() : join(redisDir, 'redis.sock')),
    peerLog,
    tlsDirs,
    agents,
    startAgent(h, extra = []) {
      const runDir = join('/dev/shm', `${hosts.id}-${h}-${Object.keys(agents).length}${Date.now() % 10000}`);
      mkdirSync(runDir, { recursive: true, mode: 0o700 });
      const log = join(dir, `agent-${h}-${Date.now()}.log`);
      const statusFile = join(dir, `status-${h}.json`);
      rmSync(statusFile, { force: true });
      const addr = `${hosts[h].ip}:${AGENT_PORT}`;
      const fd = openSync(log, 'a');
      const child = hosts.spawn(
        h,
        [process.execPath, CLI_MAIN, 'agent', '--host', h, '--listen', addr, '--redis', c.redisUrl, '--status-file', statusFile, '--tls-dir', tlsDirs[h], ...extra],
        { stdio: ['ignore', fd, fd], env: { ...process.env, MIGSAFE_RUN_DIR: runDir, MIGSAFE_STATE_DIR: join(dir, 'state') } },
      );
      const exited = new Promise<number | string>((res) => child.once('exit', (code, sig) => res(code ?? sig ?? -1)));
      const a: AgentProc = { host: h, child, log, statusFile, runDir, addr, exited };
      agents[h] = a;
      return a;
    },
    status(h) {
      const f = join(dir, `status-${h}.json`);
      if (!existsSync(f)) return null;
      try {
        return JSON.parse(readFileSync(f, 'utf8')) as AgentStatus;
      } catch {
        return null;
      }
    },
    async restartRedis() {
      try {
        process.kill(redis.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      for (let i = 0; i < 200 && processAlive(redis.pid); i++) await new Promise((r) => setTimeout(r, 10));
      redis = await startRedisServer({ dir: redisDir, port: redisPort, bind: hosts.sto.ip, appendfsync: 'always', wrap: hosts.exec('sto') });
      c.redis = redis;
    },
    cli(h, args, timeoutMs = 300_000) {
      const tls = args[0] === 'migrate' && !args.some((x) => x.startsWith('--tls')) ? ['--tls-dir', tlsDirs.operator] : [];
      const child = hosts.spawn(h, [process.execPath, CLI_MAIN, ...args, ...tls], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, MIGSAFE_STATE_DIR: join(dir, 'state') },
      });
      let stdout = '';
      let stderr = '';
      child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      return new Promise((res) =>
        child.once('exit', (code, sig) => {
          clearTimeout(timer);
          res({ code: code ?? sig ?? -1, stdout, stderr: logText(stderr) });
        }),
      );
    },
    async teardown() {
      for (const a of Object.values(agents)) {
        try {
          a!.child.kill('SIGKILL');
        } catch {
          /* gone */
        }
      }
      try {
        peer.kill('SIGKILL');
      } catch {
        /* gone */
      }
      await store?.stop();
      await redis.stop().catch(() => {});
      hosts.teardown(); // kills whatever still runs in the namespaces (QEMUs)
      for (const a of Object.values(agents)) rmSync(a!.runDir, { recursive: true, force: true });
      if (!process.env.MIGSAFE_KEEP_CLUSTER) rmSync(dir, { recursive: true, force: true });
    },
  };
  opts.t?.teardown(() => c.teardown());
  return c;
}

/** QEMU processes (pids) running inside a host's namespace. */
export function qemuPidsIn(h: Host): number[] {
  return pidsIn(h.ns).filter((pid) => {
    try {
      return readFileSync(`/proc/${pid}/comm`, 'utf8').startsWith('qemu-system');
    } catch {
      return false;
    }
  });
}

/** `-serial file:X` → a chardev in append mode, so that every QEMU of the VM writes one log. */
export function appendSerial(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '-serial' && argv[i + 1]?.startsWith('file:')) {
      out.push('-chardev', `file,id=ser0,path=${argv[i + 1]!.slice(5)},append=on`, '-serial', 'chardev:ser0');
      i++;
    } else out.push(argv[i]!);
  }
  return out;
}

/** Datagrams the peer received: [receive time ms, counter]. */
/** What the peer received: when, from which host's address (the agent whose gate let it out), the counter. */
export function peerDatagrams(file: string): { at: number; from: string; counter: number }[] {
  if (!existsSync(file)) return [];
  const out: { at: number; from: string; counter: number }[] = [];
  for (const l of readFileSync(file, 'latin1').split('\n')) {
    const m = /^(\d+) (\S+) MIGSAFE udp workload=\S+ counter=(\d+)/.exec(l);
    if (m) out.push({ at: Number(m[1]), from: m[2]!, counter: Number(m[3]) });
  }
  return out;
}

/** The guest of the migration tests: the `udp` workload, its NIC behind the agent's output gate. */
export function udpGuestArgs(c: Cluster, serial: string, qemu?: string): string[] {
  return appendSerial(
    guestQemuArgs({
      qemu,
      workload: 'udp',
      memMiB: 128,
      serialLog: serial,
      extraAppend: 'migsafe.pps=20',
      netdev: { netdev: gateNetdev(), ip: '192.168.77.2/24', gw: '192.168.77.1', peer: `${c.hosts.sto.ip}:${PEER_PORT}` },
    }),
  );
}
