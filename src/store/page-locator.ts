// Where each page of a restore plan comes from, by the page indexes of its lists: the frames
// holding the page's records, newest first, down to the first record that decides the page
// alone (a whole page or zero) — or all of them, deltas onto a zero page, as the eager reader
// applies them. A page no list holds is zero.
import type { PageIndex } from './page-index.js';

/** A frame of a plan's list: `list` indexes the plan's lists, oldest (the base) first. */
export interface FrameRef {
  list: number;
  frame: number;
}

const pack = (list: number, frame: number) => list * 2 ** 32 + frame;
const unpackRef = (v: number): FrameRef => ({ list: Math.floor(v / 2 ** 32), frame: v % 2 ** 32 });

export class PageLocator {
  /** The newest record's frame of each page (packed), −1: no list holds the page. */
  private readonly first: Float64Array;
  /** Older records a page needs under its newest one, newest first (packed). */
  private readonly more = new Map<number, number[]>();

  /** `indexes`: one per list of the plan, oldest first. */
  constructor(
    readonly indexes: readonly PageIndex[],
    readonly ramPages: number,
  ) {
    this.first = new Float64Array(ramPages).fill(-1);
    const decided = new Uint8Array(ramPages);
    for (let li = indexes.length - 1; li >= 0; li--) {
      const ix = indexes[li]!;
      // Within a list a later frame is newer (a version's paused stage after its live stage).
      for (let f = ix.frames - 1; f >= 0; f--) {
        for (let k = ix.start[f + 1]! - 1; k >= ix.start[f]!; k--) {
          const p = ix.pages[k]!;
          if (decided[p]) continue;
          const ref = pack(li, f);
          if (this.first[p]! < 0) this.first[p] = ref;
          else {
            const m = this.more.get(p);
            if (m) m.push(ref);
            else this.more.set(p, [ref]);
          }
          if (ix.alone[k]) decided[p] = 1;
        }
      }
    }
  }

  /** Whether any list holds page p (else it is zero). */
  held(p: number): boolean {
    return this.first[p]! >= 0;
  }

  /** The frames page p needs, newest first; empty: the page is zero. */
  frames(p: number): FrameRef[] {
    const f = this.first[p]!;
    if (f < 0) return [];
    const m = this.more.get(p);
    return m ? [unpackRef(f), ...m.map(unpackRef)] : [unpackRef(f)];
  }

  /** Pages no list holds: zero, final without reading anything. */
  zeroPages(): number[] {
    const out: number[] = [];
    for (let p = 0; p < this.ramPages; p++) if (this.first[p]! < 0) out.push(p);
    return out;
  }
}
