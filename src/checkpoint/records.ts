// Reading the headers of a batch buffer from the addon (format: src/kernel/native.ts).
import { RECORD_HEADER_BYTES } from '../kernel/native.js';

export interface RecordStats {
  records: number;
  zero: number;
  delta: number;
  full: number;
  payloadBytes: number;
}

export function recordStats(buf: Uint8Array): RecordStats {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const s: RecordStats = { records: 0, zero: 0, delta: 0, full: 0, payloadBytes: 0 };
  for (let at = 0; at + RECORD_HEADER_BYTES <= buf.length; ) {
    const kind = dv.getUint8(at + 4);
    const len = dv.getUint32(at + 8, true);
    s.records++;
    s.payloadBytes += len;
    if (kind === 0) s.zero++;
    else if (kind === 1) s.delta++;
    else s.full++;
    at += RECORD_HEADER_BYTES + len;
  }
  return s;
}
