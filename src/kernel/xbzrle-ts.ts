// Pure-TypeScript XBZRLE (QEMU's migration/xbzrle.c format): the reference the native kernel
// is tested against, and the "no addon" line of the benchmark. Same bytes, same overflow rule,
// same decoder checks as addon/src/xbzrle_ref.cc.
//
//   page  = zrun nzrun | zrun nzrun page     (the trailing unchanged run is omitted)
//   zrun  = ULEB128 length of an unchanged run (only the first may be 0)
//   nzrun = ULEB128 length (> 0), then that many bytes of the NEW page

export const XBZRLE_PAGE = 4096;

function putUleb(out: Uint8Array, d: number, v: number): number {
  if (v < 0x80) {
    out[d] = v;
    return d + 1;
  }
  out[d] = (v & 0x7f) | 0x80;
  out[d + 1] = v >>> 7;
  return d + 2;
}

/**
 * XBZRLE delta of newPage against oldPage (both 4096 bytes). Empty when unchanged; null when
 * QEMU's encoder (output limit 4096 bytes) reports overflow, i.e. the page goes whole.
 */
export function encodePageTs(oldPage: Uint8Array, newPage: Uint8Array): Uint8Array | null {
  if (oldPage.length !== XBZRLE_PAGE || newPage.length !== XBZRLE_PAGE) {
    throw new RangeError('encodePageTs: pages must be exactly 4096 bytes');
  }
  const max = XBZRLE_PAGE;
  const out = new Uint8Array(max);
  // Word compares when both views are 4-byte aligned: the unchanged runs dominate.
  const aligned = (oldPage.byteOffset & 3) === 0 && (newPage.byteOffset & 3) === 0;
  const o32 = aligned ? new Uint32Array(oldPage.buffer, oldPage.byteOffset, 1024) : null;
  const n32 = aligned ? new Uint32Array(newPage.buffer, newPage.byteOffset, 1024) : null;
  let d = 0;
  let i = 0;
  while (i < max) {
    // QEMU checks room for two bytes before every unchanged run, even the omitted last one.
    if (d + 2 > max) return null;
    const z0 = i;
    if (o32 && n32) {
      while (i < max && (i & 3) !== 0 && oldPage[i] === newPage[i]) i++;
      if ((i & 3) === 0) while (i < max && o32[i >>> 2] === n32[i >>> 2]) i += 4;
    }
    while (i < max && oldPage[i] === newPage[i]) i++;
    if (i === max) return z0 === 0 ? new Uint8Array(0) : out.slice(0, d);
    d = putUleb(out, d, i - z0);
    if (d + 2 > max) return null;
    const s = i;
    while (i < max && oldPage[i] !== newPage[i]) i++;
    const n = i - s;
    if (d + (n < 0x80 ? 1 : 2) + n > max) return null;
    d = putUleb(out, d, n);
    out.set(newPage.subarray(s, i), d);
    d += n;
  }
  return out.slice(0, d);
}

/** Error thrown for a malformed delta. */
export class XbzrleError extends Error {
  override name = 'XbzrleError';
}

/**
 * Applies an XBZRLE delta to a copy of oldPage. Accepts exactly what QEMU's decoder accepts
 * (plus length <= 4096); anything else throws XbzrleError.
 */
export function decodePageTs(oldPage: Uint8Array, delta: Uint8Array): Uint8Array {
  if (oldPage.length !== XBZRLE_PAGE) throw new RangeError('decodePageTs: oldPage must be 4096 bytes');
  if (delta.length > XBZRLE_PAGE) throw new XbzrleError('delta longer than a page');
  const page = new Uint8Array(oldPage);
  const slen = delta.length;
  let i = 0;
  let d = 0;
  const get = (): number => {
    const b0 = delta[i]!;
    if (!(b0 & 0x80)) {
      i += 1;
      return b0;
    }
    const b1 = delta[i + 1]!;
    if (b1 & 0x80) throw new XbzrleError('malformed length (more than 14 bits)');
    i += 2;
    return (b0 & 0x7f) | (b1 << 7);
  };
  while (i < slen) {
    if (slen - i < 2) throw new XbzrleError('truncated delta: unchanged run without a changed run');
    const first = i === 0;
    const z = get();
    if (!first && z === 0) throw new XbzrleError('empty unchanged run');
    d += z;
    if (d > XBZRLE_PAGE) throw new XbzrleError('delta runs past the end of the page');
    if (slen - i < 2) throw new XbzrleError('truncated delta: changed run missing');
    const n = get();
    if (n === 0) throw new XbzrleError('empty changed run');
    if (d + n > XBZRLE_PAGE) throw new XbzrleError('delta runs past the end of the page');
    if (i + n > slen) throw new XbzrleError('truncated delta: changed bytes missing');
    page.set(delta.subarray(i, i + n), d);
    d += n;
    i += n;
  }
  return page;
}
