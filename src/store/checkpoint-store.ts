// Writing versions of one VM: begin → chunks (pipelined) → device state → atomic commit.
// Everything read back from Redis is checked before it is believed (the store is input).
import { constants as bufferConstants } from 'node:buffer';
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { scanKeys } from './redis-cluster.js';
import { STORE_FORMAT, vmKeys, type VmKeys } from './keys.js';
import { metaFromHash, type VersionMeta } from './version-meta.js';
import { PendingBase } from './base-writer.js';
import { FencedError } from './fenced-error.js';
import { NotDurableError, type Durability } from './durability.js';
import { ParentMismatchError, PendingVersion, type WriterSettings } from './pending-version.js';
import { checkRecordMac, recordMac, recordSignatureError, type RecordSignature } from './record-mac.js';
import { delAcrossSlots, deleteVersions, formatStripes, parseStripes, pickStripes, stripeKeys, stripeRange } from './stripes.js';

export { FencedError, NotDurableError, ParentMismatchError, PendingVersion };

/** Largest guest RAM a VM record may claim (a reader allocates an image of it). */
const MAX_RAM_BYTES = Math.min(bufferConstants.MAX_LENGTH, 2 ** 46);

export interface VmRecord {
  format: number;
  /** The QEMU command line the user gave (without what migsafe adds). */
  argv: string[];
  ramBytes: number;
  pageSize: number;
  createdAt: number;
  /** Directory QEMU was started in: its command line may name files relative to it. */
  cwd: string;
  /** A VM run by libvirt (attach --domain): recovery re-creates the domain from this. */
  libvirt?: LibvirtRecord;
  /** Its signature under the store's record key (record-mac.ts); absent when no key was given. */
  signature?: RecordSignature;
}

/** The libvirt domain a VM is: where libvirt answers, its name and its (migratable) XML. */
export interface LibvirtRecord {
  uri: string;
  domain: string;
  xml: string;
}

/** A list of page frames: a version's own, or the base image's (compaction). */
export type ChunkList = number | 'base';

/** The only door to a VM's keys in Redis: writers, readers and compaction go through it. */
export class CheckpointStore {
  private readonly keys: VmKeys;
  /** How this writer commits: under which lease, and when a commit counts (see fenceWith, setDurability). */
  private readonly writer: WriterSettings = { fence: () => '', durability: { kind: 'none' }, unacked: [] };
  /** `--record-key`: the VM record is signed with it when written and refused unless it verifies when read. */
  private recordKey?: Buffer;

  constructor(
    private readonly redis: Redis,
    readonly vmId: string,
  ) {
    this.keys = vmKeys(vmId);
  }

  /**
   * From now on every commit and compaction of this writer is refused atomically (FencedError)
   * unless the VM's lease is still `lease()` — the holder's "host|token" (see lease-store.ts).
   */
  fenceWith(lease: () => string): void {
    this.writer.fence = () => lease() || 'no lease held';
  }

  /** From now on a commit returns only once it is durable by `d` (durability.ts), or throws NotDurableError. */
  setDurability(d: Durability): void {
    this.writer.durability = d;
  }

  /** From now on the VM record is signed when written, and vm() refuses one that does not verify. */
  signRecordsWith(key: Buffer): void {
    this.recordKey = key;
  }

  /** Records (or checks) the VM: a VM id keeps its RAM size for life. */
  async init(argv: readonly string[], ramBytes: number, cwd = process.cwd(), libvirt?: LibvirtRecord): Promise<void> {
    // This writer records (and signs) what it runs: an existing record need not verify.
    const existing = await this.vm({ verify: false });
    if (existing) this.checkFormat(existing);
    if (existing && existing.ramBytes !== ramBytes) {
      throw new Error(
        `VM "${this.vmId}" is stored with ${existing.ramBytes} bytes of RAM, this QEMU has ${ramBytes}: ` +
          'use another --vm id, or delete the old checkpoints with `migsafe delete --vm ' +
          this.vmId +
          '`',
      );
    }
    await this.redis.hset(this.keys.vm, {
      format: STORE_FORMAT,
      argv: JSON.stringify(argv),
      ramBytes,
      pageSize: 4096,
      cwd,
      createdAt: existing?.createdAt ?? Date.now(),
      ...(libvirt ? { libvirtUri: libvirt.uri, libvirtDomain: libvirt.domain, libvirtXml: libvirt.xml } : {}),
      ...(this.recordKey ? { recordMac: recordMac(this.recordKey, this.vmId, { format: STORE_FORMAT, argv, cwd, ramBytes, libvirt }) } : {}),
    });
    // A VM id attached without --domain is no longer that domain; one recorded without a key is unsigned.
    const stale = [...(libvirt ? [] : ['libvirtUri', 'libvirtDomain', 'libvirtXml']), ...(this.recordKey ? [] : ['recordMac'])];
    if (stale.length) await this.redis.hdel(this.keys.vm, ...stale);
  }

  /** Throws unless `vm` is stored in the format this migsafe reads and writes. */
  checkFormat(vm: VmRecord): void {
    if (vm.format === STORE_FORMAT) return;
    throw new Error(
      vm.format < STORE_FORMAT
        ? `VM "${this.vmId}" was stored by an older migsafe (store format ${vm.format}, this one reads format ${STORE_FORMAT}, ` +
            `whose frames are bound to their VM and version): recover it with the migsafe that wrote it, or delete its ` +
            `checkpoints with \`migsafe delete --vm ${this.vmId}\` (or use another --vm id) and take new ones`
        : `VM "${this.vmId}" is stored in format ${vm.format}, newer than this migsafe (format ${STORE_FORMAT}): use a newer migsafe`,
    );
  }

  /** Whether the VM has a record at all (whatever its format or state). */
  async exists(): Promise<boolean> {
    return (await this.redis.exists(this.keys.vm)) === 1;
  }

  /**
   * The VM's record, checked field by field (its format is checked by checkFormat). With a record
   * key it must verify (else an error, nothing returned) unless `verify: false`: then its
   * `signature` says how it stands.
   */
  async vm(o: { verify?: boolean } = {}): Promise<VmRecord | null> {
    const h = await this.redis.hgetall(this.keys.vm);
    if (!h.format) return null;
    const bad = (what: string) =>
      new Error(`VM "${this.vmId}": its record in the store is malformed (${what}): delete it with \`migsafe delete --vm ${this.vmId}\``);
    const format = Number(h.format);
    if (!Number.isSafeInteger(format) || format < 1) throw bad(`format "${h.format}"`);
    const ramBytes = Number(h.ramBytes);
    if (!Number.isSafeInteger(ramBytes) || ramBytes <= 0 || ramBytes % 4096 !== 0 || ramBytes > MAX_RAM_BYTES) {
      throw bad(`ramBytes "${h.ramBytes}" is not a positive multiple of 4096 up to ${MAX_RAM_BYTES}`);
    }
    if (h.pageSize !== undefined && Number(h.pageSize) !== 4096) throw bad(`pageSize "${h.pageSize}", expected 4096`);
    let argv: unknown;
    try {
      argv = JSON.parse(h.argv ?? '[]');
    } catch {
      argv = undefined;
    }
    if (!Array.isArray(argv) || !argv.every((a) => typeof a === 'string')) throw bad('argv is not a JSON array of strings');
    // Older records have no libvirt fields: a VM migsafe (or the user) started.
    let libvirt: LibvirtRecord | undefined;
    if (h.libvirtXml !== undefined || h.libvirtDomain !== undefined) {
      if (!h.libvirtXml || !h.libvirtDomain || !h.libvirtUri) throw bad('libvirtUri, libvirtDomain and libvirtXml must all be set');
      libvirt = { uri: h.libvirtUri, domain: h.libvirtDomain, xml: h.libvirtXml };
    }
    const cwd = h.cwd ?? '/';
    const signature = this.recordKey && checkRecordMac(this.recordKey, this.vmId, { format, argv: argv as string[], cwd, ramBytes, libvirt }, h.recordMac);
    if (signature && signature !== 'verified' && o.verify !== false) throw recordSignatureError(this.vmId, signature);
    return {
      format,
      argv: argv as string[],
      ramBytes,
      pageSize: 4096,
      createdAt: Number(h.createdAt),
      cwd,
      ...(libvirt ? { libvirt } : {}),
      ...(signature ? { signature } : {}),
    };
  }

  /** Committed version numbers, oldest first. */
  async committed(): Promise<number[]> {
    return (await this.redis.zrange(this.keys.committed, 0, -1)).map((v) => this.versionNumber(v, 'committed set'));
  }

  async head(): Promise<number> {
    const top = await this.redis.zrevrange(this.keys.committed, 0, 0);
    return top.length ? this.versionNumber(top[0]!, 'committed set') : 0;
  }

  /** The version the base image holds (0: none). */
  async base(): Promise<number> {
    const b = await this.redis.get(this.keys.base);
    return b === null ? 0 : this.versionNumber(b, 'base');
  }

  /** The committed versions and the base, read at one instant (MULTI). */
  async snapshot(): Promise<{ committed: number[]; base: number }> {
    const res = (await this.redis.multi().zrange(this.keys.committed, 0, -1).get(this.keys.base).exec()) ?? [];
    for (const [err] of res) if (err) throw err;
    const committed = (res[0]?.[1] as string[]).map((v) => this.versionNumber(v, 'committed set'));
    const b = res[1]?.[1] as string | null;
    return { committed, base: b === null ? 0 : this.versionNumber(b, 'base') };
  }

  private versionNumber(s: string, where: string): number {
    const n = Number(s);
    if (!Number.isSafeInteger(n) || n <= 0) {
      throw new Error(`VM "${this.vmId}": "${s}" in its ${where} is not a version number: the store is corrupt`);
    }
    return n;
  }

  async meta(version: number): Promise<VersionMeta | null> {
    const h = await this.redis.hgetall(this.keys.version(version));
    if (!h.version) return null;
    return metaFromHash(h, `version ${version} of VM "${this.vmId}"`);
  }

  async metas(): Promise<VersionMeta[]> {
    const versions = await this.committed();
    const pipe = this.redis.pipeline();
    for (const v of versions) pipe.hgetall(this.keys.version(v));
    const res = (await pipe.exec()) ?? [];
    return res.map(([err, h], i) => {
      if (err) throw err;
      return metaFromHash(h as Record<string, string>, `version ${versions[i]} of VM "${this.vmId}"`);
    });
  }

  /** Deletes versions left uncommitted by a writer that died. Call before writing. */
  async cleanupPending(): Promise<number[]> {
    const pending = (await this.redis.smembers(this.keys.pending)).map(Number);
    if (pending.length === 0) return [];
    await deleteVersions(this.redis, this.vmId, pending);
    await this.redis.srem(this.keys.pending, ...pending.map(String));
    return pending;
  }

  async begin(parent: number): Promise<PendingVersion> {
    const version = await this.redis.incr(this.keys.seq);
    const stripes = pickStripes(this.redis, this.vmId, `v${version}`);
    const m = this.redis.multi().sadd(this.keys.pending, String(version));
    // Named before anything is written, so that a cleanup finds them (stripes.ts).
    if (stripes) m.hset(this.keys.version(version), 'stripes', formatStripes(stripes));
    await m.exec();
    return new PendingVersion(this.redis, this.keys, this.vmId, version, parent, this.writer, stripes);
  }

  /** Starts a new base image holding version `version` whole (see compaction.ts). */
  async beginBase(version: number): Promise<PendingBase> {
    // A new name per attempt: what an interrupted one left is never mistaken for this one's (gc removes it).
    const stripes = pickStripes(this.redis, this.vmId, `b${version}.${randomBytes(4).toString('hex')}`);
    const base = new PendingBase(this.redis, this.keys, this.vmId, version, () => this.writer.fence(), stripes);
    await base.clear();
    return base;
  }

  /** The keys of a chunk list: one, or its stripes when `stripes` (a stored descriptor) names them. */
  private listKeys(list: ChunkList, stripes?: string): string[] {
    if (stripes) return stripeKeys(this.vmId, parseStripes(stripes, `VM "${this.vmId}" ${list === 'base' ? 'base image' : `version ${list}`}`));
    return [list === 'base' ? this.keys.baseChunks : this.keys.chunks(list)];
  }

  /** Frames in a chunk list (0 when it does not exist). */
  async chunkCount(list: ChunkList, stripes?: string): Promise<number> {
    return (await this.chunkLengths(list, stripes)).reduce((a, b) => a + b, 0);
  }

  /** Frames in each key of a chunk list (0 where it does not exist). */
  chunkLengths(list: ChunkList, stripes?: string): Promise<number[]> {
    return Promise.all(this.listKeys(list, stripes).map((k) => this.redis.llen(k)));
  }

  /**
   * Frames `first`..`last` (inclusive) of a chunk list, in list order. Short (never mixed up)
   * when the list holds fewer: frame i of S stripes is at floor(i / S) of stripe i % S.
   */
  async chunkRange(list: ChunkList, first: number, last: number, stripes?: string): Promise<Buffer[]> {
    const keys = this.listKeys(list, stripes);
    if (keys.length === 1) return this.redis.lrangeBuffer(keys[0]!, first, last);
    const n = keys.length;
    const ranges = keys.map((_, s) => stripeRange(s, n, first, last));
    const parts = await Promise.all(
      keys.map((k, s) => (ranges[s]!.hi < ranges[s]!.lo ? Promise.resolve([] as Buffer[]) : this.redis.lrangeBuffer(k, ranges[s]!.lo, ranges[s]!.hi))),
    );
    const out: Buffer[] = [];
    for (let i = first; i <= last; i++) {
      const s = i % n;
      const f = parts[s]![Math.floor(i / n) - ranges[s]!.lo];
      if (!f) break;
      out.push(f);
    }
    return out;
  }

  /** The device state frame of a version, or null. */
  deviceState(version: number): Promise<Buffer | null> {
    return this.redis.getBuffer(this.keys.device(version));
  }

  /** The page index of a chunk list (page-index.ts), or null (none: written by an older migsafe). */
  pageIndex(list: ChunkList): Promise<Buffer | null> {
    return this.redis.getBuffer(list === 'base' ? this.keys.baseIndex : this.keys.index(list));
  }

  /**
   * The same VM's store over a connection of its own (close() it when done): reads on it do not
   * queue behind those of this one (lazy recovery's page faults behind its background read).
   */
  duplicate(): CheckpointStore & { close(): void } {
    const r = this.redis.duplicate();
    const s = new CheckpointStore(r, this.vmId) as CheckpointStore & { close(): void };
    s.close = () => r.disconnect();
    return s;
  }

  /** Where the agent that runs the VM listens (ADDR:PORT), for `migsafe migrate`. */
  async setAgentAddress(address: string): Promise<void> {
    await this.redis.set(this.keys.agent, address);
  }

  async agentAddress(): Promise<string | null> {
    return this.redis.get(this.keys.agent);
  }

  /** Removes every key of the VM. */
  async deleteAll(): Promise<number> {
    // Stripes first (other slots, one DEL each): while the record exists, gc still sees them.
    let n = await delAcrossSlots(this.redis, await scanKeys(this.redis, `migsafe:{${this.vmId}/*`));
    const keys = await scanKeys(this.redis, `${this.keys.prefix}*`);
    // One slot (the hash tag): a DEL of many keys is fine on a cluster too.
    for (let i = 0; i < keys.length; i += 1000) n += await this.redis.del(...keys.slice(i, i + 1000));
    return n;
  }

}

