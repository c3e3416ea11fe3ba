// QEMU's migration stream, as a post-copy *source* writes it, and the return path's page
// requests, as the destination writes them — byte for byte as QEMU 7.2 and 8.1 do
// (migration/savevm.c, migration/ram.c, migration/migration.c), so that a stock QEMU started
// with `-incoming` loads what migsafe serves from its store without knowing it is not a QEMU.

export const QEMU_VM_FILE_MAGIC = 0x5145564d; // "QEVM"
export const QEMU_VM_FILE_VERSION = 3;

/** Section and element types (savevm.h). */
export const VM = { EOF: 0x00, START: 0x01, PART: 0x02, END: 0x03, FULL: 0x04, COMMAND: 0x08, FOOTER: 0x7e } as const;

/** enum qemu_vm_cmd (savevm.c). */
export const CMD = { OPEN_RETURN_PATH: 1, PING: 2, POSTCOPY_ADVISE: 3, POSTCOPY_LISTEN: 4, POSTCOPY_RUN: 5, POSTCOPY_RAM_DISCARD: 6, PACKAGED: 7 } as const;

/** RAM_SAVE_FLAG_* (ram.c): the low bits of each page's be64 address. */
export const RAM_FLAG = { ZERO: 0x02, MEM_SIZE: 0x04, PAGE: 0x08, EOS: 0x10, CONTINUE: 0x20 } as const;

/** enum mig_rp_message_type (migration.c). */
export const RP = { SHUT: 1, PONG: 2, REQ_PAGES_ID: 3, REQ_PAGES: 4 } as const;

/** MAX_VM_CMD_PACKAGED_SIZE (migration.h): the largest packaged blob a destination takes. */
export const MAX_PACKAGED_BYTES = 1 << 24;

export const PAGE_SIZE = 4096;

/**
 * The section id of migsafe's "ram" section. Any id works as long as no device section of the
 * packaged device state uses it; the device state was saved without RAM (xen-save-devices-state
 * skips it), and QEMU numbers sections from 0 up, so this one is far above theirs.
 */
export const RAM_SECTION_ID = 0x6d730000;
/** "ram"'s version_id in QEMU 7.2 and 8.1 (ram.c: register_savevm_live("ram", 0, 4, ...)). */
export const RAM_SECTION_VERSION = 4;

const be16 = (v: number) => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
};
const be32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
};
const be64 = (v: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(v);
  return b;
};
const idstr = (s: string) => {
  const b = Buffer.from(s, 'latin1');
  if (b.length === 0 || b.length > 255) throw new RangeError(`RAM block name "${s}" must be 1..255 bytes`);
  return Buffer.concat([Buffer.from([b.length]), b]);
};

/** QEMU_VM_FILE_MAGIC and version (qemu_savevm_state_header; no configuration section). */
export function streamHeader(): Buffer {
  return Buffer.concat([be32(QEMU_VM_FILE_MAGIC), be32(QEMU_VM_FILE_VERSION)]);
}

/** qemu_savevm_command_send: the type, command, length and data. */
export function command(cmd: number, data: Buffer = Buffer.alloc(0)): Buffer {
  if (data.length > 0xffff) throw new RangeError(`command ${cmd}: ${data.length} bytes of data (at most 65535)`);
  return Buffer.concat([Buffer.from([VM.COMMAND]), be16(cmd), be16(data.length), data]);
}

/** MIG_CMD_POSTCOPY_ADVISE with postcopy-ram: the page-size summary and the target page size. */
export function postcopyAdvise(pageSizeSummary = PAGE_SIZE, targetPageSize = PAGE_SIZE): Buffer {
  return command(CMD.POSTCOPY_ADVISE, Buffer.concat([be64(BigInt(pageSizeSummary)), be64(BigInt(targetPageSize))]));
}

/**
 * MIG_CMD_POSTCOPY_RAM_DISCARD (qemu_savevm_send_postcopy_ram_discard): version 0, the block's
 * name, a nil, then be64 start and length per range.
 */
export function postcopyRamDiscard(block: string, ranges: readonly [number, number][]): Buffer {
  const parts = [Buffer.from([0]), idstr(block), Buffer.from([0])];
  for (const [start, len] of ranges) parts.push(be64(BigInt(start)), be64(BigInt(len)));
  return command(CMD.POSTCOPY_RAM_DISCARD, Buffer.concat(parts));
}

/** MIG_CMD_PACKAGED: the command (its length) followed by the blob, which QEMU loads as a stream of its own. */
export function packaged(blob: Buffer): Buffer {
  if (blob.length > MAX_PACKAGED_BYTES) throw new RangeError(`packaged state of ${blob.length} bytes: QEMU takes at most ${MAX_PACKAGED_BYTES}`);
  return Buffer.concat([command(CMD.PACKAGED, be32(blob.length)), blob]);
}

const footer = (id: number) => Buffer.concat([Buffer.from([VM.FOOTER]), be32(id)]);

export interface RamBlockInfo {
  name: string;
  bytes: number;
}

/**
 * The "ram" section's start (ram_save_setup): total bytes | MEM_SIZE, then per block its name
 * and used length (4 KiB pages: no page size; no ignore-shared: no address), then EOS.
 */
export function ramSetupSection(blocks: readonly RamBlockInfo[]): Buffer {
  const total = blocks.reduce((a, b) => a + BigInt(b.bytes), 0n);
  const body = [be64(total | BigInt(RAM_FLAG.MEM_SIZE))];
  for (const b of blocks) body.push(idstr(b.name), be64(BigInt(b.bytes)));
  body.push(be64(BigInt(RAM_FLAG.EOS)));
  const head = Buffer.concat([Buffer.from([VM.START]), be32(RAM_SECTION_ID), idstr('ram'), be32(0), be32(RAM_SECTION_VERSION)]);
  return Buffer.concat([head, ...body, footer(RAM_SECTION_ID)]);
}

export interface PageOut {
  block: string;
  /** Byte offset in the block, page aligned. */
  offset: number;
  /** PAGE_SIZE bytes, or undefined for a zero page (RAM_SAVE_FLAG_ZERO, fill byte 0). */
  data?: Buffer;
}

/**
 * A "ram" PART section of pages (ram_save_iterate → save_zero_page / save_normal_page): each
 * page's be64 offset | flags, the block name when it is not the previous page's (CONTINUE
 * otherwise), then the fill byte or the page; EOS; the footer. `final` makes it the END
 * section (qemu_savevm_state_complete_postcopy).
 */
export function ramPagesSection(pages: readonly PageOut[], final = false): Buffer {
  const parts: Buffer[] = [Buffer.from([final ? VM.END : VM.PART]), be32(RAM_SECTION_ID)];
  let last: string | undefined;
  for (const p of pages) {
    if (p.offset % PAGE_SIZE) throw new RangeError(`page offset ${p.offset} of ${p.block} is not page aligned`);
    let flags = p.data ? RAM_FLAG.PAGE : RAM_FLAG.ZERO;
    if (p.block === last) flags |= RAM_FLAG.CONTINUE;
    parts.push(be64(BigInt(p.offset) | BigInt(flags)));
    if (p.block !== last) parts.push(idstr(p.block));
    last = p.block;
    if (p.data) {
      if (p.data.length !== PAGE_SIZE) throw new RangeError(`page of ${p.data.length} bytes (${p.block} +0x${p.offset.toString(16)})`);
      parts.push(p.data);
    } else parts.push(Buffer.from([0]));
  }
  parts.push(be64(BigInt(RAM_FLAG.EOS)), footer(RAM_SECTION_ID));
  return Buffer.concat(parts);
}

/**
 * The device state saved by xen-save-devices-state (or the migsafe-ft object, which saves the
 * same stream: qemu_save_device_state) is magic, version, FULL device sections, EOF. Inside a
 * package QEMU reads sections only, and an EOF there would end the package before POSTCOPY_RUN:
 * both ends are cut off.
 */
export function deviceSections(deviceState: Buffer): Buffer {
  if (deviceState.length < 9 || deviceState.readUInt32BE(0) !== QEMU_VM_FILE_MAGIC) {
    throw new Error('the stored device state is not a QEMU migration stream (no QEVM magic)');
  }
  const v = deviceState.readUInt32BE(4);
  if (v !== QEMU_VM_FILE_VERSION) throw new Error(`the stored device state is stream version ${v}, not ${QEMU_VM_FILE_VERSION}`);
  if (deviceState[8] !== VM.FULL) throw new Error(`the stored device state does not start with a device section (type 0x${deviceState[8]!.toString(16)})`);
  if (deviceState[deviceState.length - 1] !== VM.EOF) throw new Error('the stored device state does not end with QEMU_VM_EOF');
  return deviceState.subarray(8, deviceState.length - 1);
}

/** What postcopy_start packages: LISTEN, the device sections, RUN. */
export function switchoverPackage(deviceState: Buffer): Buffer {
  return packaged(Buffer.concat([command(CMD.POSTCOPY_LISTEN), deviceSections(deviceState), command(CMD.POSTCOPY_RUN)]));
}

/**
 * Everything before the pages: header, return path, advise, RAM setup, a discard, the
 * switchover package. The discard (of the first page, which LISTEN discards anyway) is there
 * because QEMU 7.2's LISTEN without one sets the incoming post-copy state back from LISTENING
 * to DISCARD (loadvm_postcopy_handle_listen → postcopy_ram_prepare_discard): pages would then
 * be loaded as precopy pages, written straight into registered memory — a fault on the page
 * being loaded, which the listen thread itself waits for. QEMU's own source always discards.
 */
export function streamPrologue(blocks: readonly RamBlockInfo[], deviceState: Buffer): Buffer {
  return Buffer.concat([
    streamHeader(),
    command(CMD.OPEN_RETURN_PATH),
    postcopyAdvise(),
    ramSetupSection(blocks),
    postcopyRamDiscard(blocks[0]!.name, [[0, PAGE_SIZE]]),
    switchoverPackage(deviceState),
  ]);
}

/** The end of the migration: an empty END section for "ram", then EOF. */
export function streamEpilogue(): Buffer {
  return Buffer.concat([ramPagesSection([], true), Buffer.from([VM.EOF])]);
}

export type ReturnMessage =
  | { type: 'req-pages'; block: string; offset: number; length: number }
  | { type: 'shut'; status: number }
  | { type: 'pong'; value: number }
  | { type: 'other'; code: number };

/**
 * Parses the return path (migrate_send_rp_message: be16 type, be16 length, data). REQ_PAGES
 * names no block: it is the block of the last REQ_PAGES_ID (the destination sends the name only
 * when it changes), which this parser remembers.
 */
export class ReturnPathParser {
  private buf: Buffer = Buffer.alloc(0);
  private lastBlock?: string;

  push(chunk: Buffer): ReturnMessage[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out: ReturnMessage[] = [];
    while (this.buf.length >= 4) {
      const type = this.buf.readUInt16BE(0);
      const len = this.buf.readUInt16BE(2);
      if (this.buf.length < 4 + len) break;
      const d = this.buf.subarray(4, 4 + len);
      this.buf = this.buf.subarray(4 + len);
      out.push(this.message(type, d));
    }
    return out;
  }

  private message(type: number, d: Buffer): ReturnMessage {
    if (type === RP.REQ_PAGES || type === RP.REQ_PAGES_ID) {
      if (d.length < 12) throw new Error(`return path: page request of ${d.length} bytes`);
      if (type === RP.REQ_PAGES_ID) {
        const n = d[12] ?? 0;
        if (d.length < 13 + n) throw new Error('return path: page request with a truncated block name');
        this.lastBlock = d.subarray(13, 13 + n).toString('latin1');
      }
      if (this.lastBlock === undefined) throw new Error('return path: page request before any block was named');
      return { type: 'req-pages', block: this.lastBlock, offset: Number(d.readBigUInt64BE(0)), length: d.readUInt32BE(8) };
    }
    if (type === RP.SHUT) return { type: 'shut', status: d.length >= 4 ? d.readUInt32BE(0) : 0 };
    if (type === RP.PONG) return { type: 'pong', value: d.length >= 4 ? d.readUInt32BE(0) : 0 };
    return { type: 'other', code: type };
  }
}
