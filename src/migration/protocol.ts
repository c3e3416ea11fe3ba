// The control protocol's messages, checked field by field before anything uses them (a peer may
// be broken or hostile even when its certificate is good), and the migration URI, which is built
// here from the authenticated peer's address and the port it announced — never taken from the wire.
import { checkVmId } from '../store/keys.js';
import { parseAddr } from '../ha/peer.js';
import type { MigrationMode } from './vm-runtime.js';

const MODES: readonly MigrationMode[] = ['precopy', 'postcopy', 'hybrid'];
const HOST_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

type Msg = Record<string, unknown>;

function fail(what: string, field: string, rule: string, v: unknown): never {
  const shown = JSON.stringify(v) ?? String(v);
  throw new Error(`${what}: "${field}" must be ${rule} (got ${shown.length > 80 ? `${shown.slice(0, 80)}…` : shown})`);
}

/** A host name as agents use it (--host, lease holder names): 1-64 letters, digits, . _ - */
export function checkHostName(h: unknown, what = 'host name'): string {
  if (typeof h !== 'string' || !HOST_NAME.test(h)) fail(what, 'host', "1-64 letters, digits, '.', '_' or '-'", h);
  return h;
}

/** A message is an object (the peer hands over only those; this holds for any other caller too). */
function objectMsg(m: unknown, what: string): Msg {
  if (typeof m !== 'object' || m === null || Array.isArray(m)) fail(what, '(message)', 'an object', m);
  return m as Msg;
}

function vmField(m: Msg, what: string): string {
  if (typeof m.vm !== 'string') fail(what, 'vm', 'a VM id', m.vm);
  try {
    return checkVmId(m.vm);
  } catch (e) {
    throw new Error(`${what}: ${(e as Error).message}`);
  }
}

function modeField(m: Msg, what: string, dflt?: MigrationMode): MigrationMode {
  if (m.mode === undefined && dflt) return dflt;
  if (typeof m.mode !== 'string' || !MODES.includes(m.mode as MigrationMode)) fail(what, 'mode', MODES.join(', '), m.mode);
  return m.mode as MigrationMode;
}

/** An optional whole number in [min, max]; null counts as absent. */
function intField(m: Msg, k: string, what: string, min: number, max: number): number | undefined {
  const v = m[k];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) fail(what, k, `a whole number in ${min}..${max}`, v);
  return v;
}

export interface MigrateRequest {
  vm: string;
  to: string;
  mode: MigrationMode;
  /** QEMU max-bandwidth for the migration, bytes/s. */
  maxBandwidth?: number;
  /** QEMU max-postcopy-bandwidth, bytes/s. */
  postcopyBandwidth?: number;
  /** hybrid: switch to post-copy after this many ms of pre-copy (default: after the first pass). */
  postcopyAfterMs?: number;
}

export function checkMigrateRequest(m: Msg): MigrateRequest {
  const what = 'migrate request';
  m = objectMsg(m, what);
  const vm = vmField(m, what);
  if (typeof m.to !== 'string') fail(what, 'to', 'HOST:PORT', m.to);
  try {
    parseAddr(m.to);
  } catch (e) {
    throw new Error(`${what}: "to": ${(e as Error).message}`);
  }
  return {
    vm,
    to: m.to,
    mode: modeField(m, what, 'precopy'),
    maxBandwidth: intField(m, 'maxBandwidth', what, 1, Number.MAX_SAFE_INTEGER),
    postcopyBandwidth: intField(m, 'postcopyBandwidth', what, 1, Number.MAX_SAFE_INTEGER),
    postcopyAfterMs: intField(m, 'postcopyAfterMs', what, 0, 86_400_000),
  };
}

export interface PrepareRequest {
  vm: string;
  mode: MigrationMode;
  from: string;
}

export function checkPrepareRequest(m: Msg): PrepareRequest {
  const what = 'prepare request';
  m = objectMsg(m, what);
  return { vm: vmField(m, what), mode: modeField(m, what), from: checkHostName(m.from, `${what} "from"`) };
}

/** The destination's answer to prepare: its host name and the port its QEMU takes the migration on. */
export interface PrepareReply {
  host: string;
  port: number;
  /** true: its QEMU takes the migration over TLS (stream-tls.ts); absent: in clear. */
  tls?: boolean;
}

/**
 * Checks the destination's answer to prepare. It names a port only; a URI in it is refused
 * unless plain tcp: and ignored even then — the URI is built locally (migrationUri).
 */
export function checkPrepareReply(v: unknown, peerAddr: string): PrepareReply {
  const what = `prepare reply from ${peerAddr}`;
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(what, '(reply)', 'an object', v);
  const m = v as Msg;
  if (m.uri !== undefined) {
    if (typeof m.uri !== 'string' || !/^tcp:/.test(m.uri)) {
      throw new Error(
        `${what}: refusing migration URI ${JSON.stringify(m.uri)?.slice(0, 80)}: only tcp: migrations are made, ` +
          "to the destination agent's own address (exec:, unix:, fd: and other URIs never come from the network)",
      );
    }
  }
  const port = intField(m, 'port', what, 1, 65535);
  if (port === undefined) fail(what, 'port', 'a whole number in 1..65535', m.port);
  if (m.tls !== undefined && typeof m.tls !== 'boolean') fail(what, 'tls', 'true or false', m.tls);
  return { host: checkHostName(m.host, `${what} "host"`), port, ...(m.tls === true ? { tls: true } : {}) };
}

/** The QEMU migration URI to the authenticated peer at `peerAddr`: tcp:ADDR:PORT, nothing else. */
export function migrationUri(peerAddr: string, port: number): string {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`migration port ${port} is not in 1..65535`);
  const a = peerAddr.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/, '$1');
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(a)) return `tcp:${a}:${port}`;
  if (/^[0-9a-fA-F:]+$/.test(a) && a.includes(':')) return `tcp:[${a}]:${port}`;
  throw new Error(`the peer's address "${peerAddr}" is not an IP address: cannot build a migration URI`);
}

/** The `lease` notice of the source at switchover. */
export function checkLeaseNotice(d: unknown): { token: number; version: number } {
  const what = 'lease notice';
  if (typeof d !== 'object' || d === null) fail(what, '(data)', 'an object', d);
  const m = d as Msg;
  const token = intField(m, 'token', what, 1, Number.MAX_SAFE_INTEGER);
  const version = intField(m, 'version', what, 0, Number.MAX_SAFE_INTEGER);
  if (token === undefined) fail(what, 'token', 'a whole number ≥ 1', m.token);
  if (version === undefined) fail(what, 'version', 'a whole number ≥ 0', m.version);
  return { token, version };
}
