// XBZRLE's first pass: a SIMD compare of the page pair into a 4096-bit changed-byte bitmap
// plus counts (diff_page), whole or in steps (DiffCursor); also the floor and equality
// compares. The counts give an exact lower bound of the delta's size, so the encoder
// (xbzrle_encode.cc) rejects pages too dirty for a delta before walking.
#include <cstring>

#include "crc_fold.h"
#include "kernel.h"
#include "simd.h"
#include "xbzrle.h"

namespace migsafe {

namespace {

// One bit per byte: 1 where the byte of x is nonzero.
inline uint32_t nonzero_bytes(uint64_t x) {
  uint64_t t = (((x & kLo7) + kLo7) | x) & kHi;
  return uint32_t(((t >> 7) * kGather) >> 56);
}

// Words holding a run boundary: a changed byte, or a changed run that ended with the
// previous word (its top bit set).
inline uint64_t active_words(const uint64_t* neq) {
  uint64_t nz = 0, top = 0;
  for (int w = 0; w < 64; w++) {
    nz |= uint64_t(neq[w] != 0) << w;
    top |= (neq[w] >> 63) << w;
  }
  return nz | (top << 1);
}

// Changed bytes and run boundaries of a filled bitmap: enough to reject a page too dirty for
// a delta before any run is looked at.
inline void count_runs(PageDiff* pd) {
  uint32_t ch = 0, nb = 0;
  uint64_t carry = 0;
  for (int w = 0; w < 64; w++) {
    uint64_t m = pd->neq[w];
    ch += uint32_t(__builtin_popcountll(m));
    nb += uint32_t(__builtin_popcountll(m ^ (m << 1 | carry)));
    carry = m >> 63;
  }
  pd->changed = ch;
  pd->bounds = nb;
}

void diff_scalar(const uint8_t* o, const uint8_t* n, PageDiff* pd) {
  uint64_t zor = 0;
  for (int w = 0; w < 64; w++) {
    uint64_t m = 0;
    for (int k = 0; k < 8; k++) {
      uint64_t nv = load64(n + 64 * w + 8 * k);
      zor |= nv;
      m |= uint64_t(nonzero_bytes(load64(o + 64 * w + 8 * k) ^ nv)) << (8 * k);
    }
    pd->neq[w] = m;
  }
  pd->active = active_words(pd->neq);
  pd->new_zero = zor == 0;
  count_runs(pd);
}

#ifdef MIGSAFE_X86
// The compare pass at the AVX2 level, with Snap and Blend as compare_blocks (below) has them:
// Blend stores the whole new block where it changed when blend is the old page itself (old +
// changes = new), and blends bytes into any other buffer. The counts and the words holding a
// run boundary are taken as the blocks go, with scalar popcnt beside the vector loads (there
// is no VPOPCNTQ at this level; a second pass over the bitmap cost more). With Crc (needs
// Snap, and VPCLMULQDQ on 256-bit registers: crc32c_fold256_constants) every block is also
// folded into the snapshot's CRC32C, returned raw (not inverted): four accumulators, for the
// halves of even and of odd blocks, each moved 128 bytes forward per fold (crc_fold.h). The
// carry-less multiplies run beside the scalar counting, so the checksum costs little more.
template <bool Snap, bool Blend, bool Crc = false>
__attribute__((target("avx2,popcnt,vpclmulqdq,pclmul,sse4.2"))) uint32_t compare_page_avx2(
    const uint8_t* o, const uint8_t* n, uint8_t* snap, uint8_t* blend, PageDiff* pd,
    const FoldConstants* fc = nullptr) {
  static_assert(!Crc || Snap, "the CRC describes the snapshot");
  uint64_t* neq = pd->neq;
  uint64_t carry = 0, act = 0;
  uint32_t ch = 0, nb = 0;
  __m256i zor = _mm256_setzero_si256();
  __m256i K, x[4];
  if constexpr (Crc) K = fold_k2(fc->k1024);
  for (int w = 0; w < 64; w++) {
    __m256i a0 = _mm256_loadu_si256((const __m256i*)(o + 64 * w));
    __m256i a1 = _mm256_loadu_si256((const __m256i*)(o + 64 * w + 32));
    __m256i b0 = _mm256_loadu_si256((const __m256i*)(n + 64 * w));
    __m256i b1 = _mm256_loadu_si256((const __m256i*)(n + 64 * w + 32));
    asm("" : "+x"(b0), "+x"(b1));  // one load of the new page: snapshot and compare agree
    if constexpr (Snap) {
      _mm256_store_si256((__m256i*)(snap + 64 * w), b0);
      _mm256_store_si256((__m256i*)(snap + 64 * w + 32), b1);
    }
    zor = _mm256_or_si256(zor, _mm256_or_si256(b0, b1));
    if constexpr (Crc) {
      int j = (w & 1) * 2;  // even blocks into x[0], x[1]; odd ones into x[2], x[3]
      if (w >= 2) {
        x[j] = fold256(x[j], K, b0);
        x[j + 1] = fold256(x[j + 1], K, b1);
      } else {
        x[j] = w == 0 ? _mm256_xor_si256(b0, _mm256_castsi128_si256(_mm_cvtsi32_si128(-1))) : b0;  // CRC seed ~0
        x[j + 1] = b1;
      }
    }
    __m256i q0 = _mm256_cmpeq_epi8(a0, b0), q1 = _mm256_cmpeq_epi8(a1, b1);
    uint64_t m = ~(uint64_t(uint32_t(_mm256_movemask_epi8(q1))) << 32 | uint32_t(_mm256_movemask_epi8(q0)));
    if constexpr (Blend) {
      if (m) {
        uint8_t* d = blend + 64 * w;
        if (blend == o) {
          _mm256_storeu_si256((__m256i*)d, b0);
          _mm256_storeu_si256((__m256i*)(d + 32), b1);
        } else {
          _mm256_storeu_si256((__m256i*)d, _mm256_blendv_epi8(b0, _mm256_loadu_si256((const __m256i*)d), q0));
          _mm256_storeu_si256((__m256i*)(d + 32), _mm256_blendv_epi8(b1, _mm256_loadu_si256((const __m256i*)(d + 32)), q1));
        }
      }
    }
    neq[w] = m;
    ch += uint32_t(__builtin_popcountll(m));
    nb += uint32_t(__builtin_popcountll(m ^ (m << 1 | carry)));
    act |= (uint64_t(m != 0) << w) | (carry << w);  // a run that ended with word w-1 ends in w
    carry = m >> 63;
  }
  pd->changed = ch;
  pd->bounds = nb;
  pd->active = act;
  pd->new_zero = _mm256_testz_si256(zor, zor);
  if constexpr (Crc) return fold_finish256(*fc, x[0], x[1], x[2], x[3]);
  return 0;
}

void diff_avx2(const uint8_t* o, const uint8_t* n, PageDiff* pd) {
  compare_page_avx2<false, false>(o, n, nullptr, nullptr, pd);
}

// count_runs on 8 words a step; VPOPCNTQ where the CPU has it.
__attribute__((target("avx512f,avx512bw,avx512vpopcntdq"))) void count_runs_vpopcnt(PageDiff* pd) {
  __m512i ch = _mm512_setzero_si512(), nb = ch, prev = ch;
  for (int w = 0; w < 64; w += 8) {
    __m512i v = _mm512_loadu_si512(pd->neq + w);
    __m512i carry = _mm512_srli_epi64(_mm512_alignr_epi64(v, prev, 7), 63);  // top bit of word w-1
    ch = _mm512_add_epi64(ch, _mm512_popcnt_epi64(v));
    nb = _mm512_add_epi64(nb, _mm512_popcnt_epi64(_mm512_xor_si512(v, _mm512_or_si512(_mm512_slli_epi64(v, 1), carry))));
    prev = v;
  }
  pd->changed = uint32_t(_mm512_reduce_add_epi64(ch));
  pd->bounds = uint32_t(_mm512_reduce_add_epi64(nb));
}

inline void count_runs_avx512(PageDiff* pd) {
  if (cpu_has_vpopcntdq()) count_runs_vpopcnt(pd);
  else count_runs(pd);
}

// What every AVX-512 compare pass derives from the finished bitmap: words holding a run
// boundary, whether the new page is zero, the counts.
__attribute__((target("avx512f,avx512bw,bmi,bmi2,popcnt"))) inline void finish_diff_avx512(PageDiff* pd, __m512i zor) {
  uint64_t nz = 0, top = 0;
  const __m512i zero = _mm512_setzero_si512();
  for (int w = 0; w < 64; w += 8) {
    __m512i v = _mm512_loadu_si512(pd->neq + w);
    nz |= uint64_t(_mm512_test_epi64_mask(v, v)) << w;
    top |= uint64_t(_mm512_cmplt_epi64_mask(v, zero)) << w;
  }
  pd->active = nz | (top << 1);
  pd->new_zero = _mm512_test_epi64_mask(zor, zor) == 0;
  count_runs_avx512(pd);
}

// The AVX-512 compare loops only store masks; everything else about the page is derived
// afterwards from the 512-byte bitmap with a few vector ops, so the loop stays as lean as the
// floor.
// Blocks [w0, w0 + count) of the compare pass: each block's mask into neq, the new block
// ORed into zor; with Snap the new block also goes to snap (64-byte aligned), with Blend its
// changed bytes to blend, all from the registers compared, so that bitmap, snapshot and blend
// describe the same contents whatever happens to the new page meanwhile.
template <bool Snap, bool Blend>
__attribute__((target("avx512f,avx512bw"), always_inline)) inline __m512i compare_blocks(
    const uint8_t* o, const uint8_t* n, uint8_t* snap, uint8_t* blend, uint64_t* neq, int w0, int count,
    __m512i zor) {
  for (int w = w0; w < w0 + count; w++) {
    __m512i a = _mm512_loadu_si512(o + 64 * w);
    __m512i b = _mm512_loadu_si512(n + 64 * w);
    asm("" : "+v"(b));  // keep b in a register: GCC would load it twice (3 loads a block, not 2)
    if constexpr (Snap) _mm512_store_si512(snap + 64 * w, b);
    zor = _mm512_or_si512(zor, b);
    __mmask64 m = _mm512_cmpneq_epi8_mask(a, b);
    if constexpr (Blend) _mm512_mask_storeu_epi8(blend + 64 * w, m, b);
    neq[w] = m;
  }
  return zor;
}

// The compare pass of a whole page.
__attribute__((target("avx512f,avx512bw,bmi,bmi2,popcnt"))) void diff_avx512(const uint8_t* o, const uint8_t* n,
                                                                                PageDiff* pd) {
  finish_diff_avx512(pd, compare_blocks<false, false>(o, n, nullptr, nullptr, pd->neq, 0, 64, _mm512_setzero_si512()));
}

__attribute__((target("avx512f,avx512bw"))) int floor_avx512(const uint8_t* a, const uint8_t* b) {
  __m512i acc = _mm512_setzero_si512();
  for (int w = 0; w < 64; w++)
    acc = _mm512_or_si512(acc, _mm512_xor_si512(_mm512_loadu_si512(a + 64 * w),
                                                 _mm512_loadu_si512(b + 64 * w)));
  return _mm512_test_epi64_mask(acc, acc) != 0;
}

__attribute__((target("avx2"))) int floor_avx2(const uint8_t* a, const uint8_t* b) {
  __m256i acc = _mm256_setzero_si256();
  for (int w = 0; w < 128; w++)
    acc = _mm256_or_si256(acc, _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(a + 32 * w)),
                                                _mm256_loadu_si256((const __m256i*)(b + 32 * w))));
  return !_mm256_testz_si256(acc, acc);
}

__attribute__((target("avx512f,avx512bw"))) bool equal_avx512(const uint8_t* a, const uint8_t* b) {
  for (int w = 0; w < 64; w += 4) {
    __m512i x = _mm512_xor_si512(_mm512_loadu_si512(a + 64 * w), _mm512_loadu_si512(b + 64 * w));
    for (int k = 1; k < 4; k++)
      x = _mm512_or_si512(x, _mm512_xor_si512(_mm512_loadu_si512(a + 64 * (w + k)),
                                              _mm512_loadu_si512(b + 64 * (w + k))));
    if (_mm512_test_epi64_mask(x, x)) return false;
  }
  return true;
}

__attribute__((target("avx2"))) bool equal_avx2(const uint8_t* a, const uint8_t* b) {
  for (int w = 0; w < 128; w += 4) {
    __m256i x = _mm256_setzero_si256();
    for (int k = 0; k < 4; k++)
      x = _mm256_or_si256(x, _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(a + 32 * (w + k))),
                                              _mm256_loadu_si256((const __m256i*)(b + 32 * (w + k)))));
    if (!_mm256_testz_si256(x, x)) return false;
  }
  return true;
}
#endif

}  // namespace

// ---- The compare pass in steps -------------------------------------------------------------

namespace {
constexpr int kStepBlocks = 8;  // 512 bytes of each page per step

#ifdef MIGSAFE_X86
// Blocks [w, w + kStepBlocks) of the pass; zor and the CRC lanes live in the cursor between
// steps (a few L1 loads and stores a step).
template <bool Snap, bool Blend>
__attribute__((target("avx512f,avx512bw"))) void step_avx512(DiffCursor* c) {
  __m512i zor = _mm512_load_si512(c->state);
  zor = compare_blocks<Snap, Blend>(c->o, c->n, c->snap, c->blend, c->pd->neq, c->w, kStepBlocks, zor);
  _mm512_store_si512(c->state, zor);
  c->w += kStepBlocks;
}

// The whole compare pass at the AVX2 level, run by diff_end just before the page's walk: on
// the AVX2 machine measured (AMD Zen 3), spreading it over the previous page's walk in steps
// made the encoder 13-15 % slower, and a pass at diff_begin 7-9 % slower, than this order.
// Blending the shadow inside the compare loop costs a branch per block, which mispredicts on
// pages whose changed blocks are few and scattered: on wset the batch ran 1.14x as fast with
// the changed blocks copied from the snapshot after the pass. On dense pages the branch is
// predictable and that copy costs more (kv, qsort: 3-5 % slower). So the cursor keeps how
// many active words (pd->active: changed, or ending a run) its last page had, and that
// chooses for the next page through it.
constexpr int kInlineBlendWords = 24;

__attribute__((target("avx2"))) void copy_changed_blocks(DiffCursor* c) {
  if (c->blend != c->o) return blend_changed(*c->pd, c->snap, c->blend);
  for (uint64_t act = c->pd->active; act; act &= act - 1) {
    uint32_t w = uint32_t(__builtin_ctzll(act));
    _mm256_storeu_si256((__m256i*)(c->blend + 64 * w), _mm256_load_si256((const __m256i*)(c->snap + 64 * w)));
    _mm256_storeu_si256((__m256i*)(c->blend + 64 * w + 32), _mm256_load_si256((const __m256i*)(c->snap + 64 * w + 32)));
  }
}

// With Crc, returns the snapshot's CRC32C.
template <bool Snap, bool Blend, bool Crc = false>
uint32_t pass_avx2(DiffCursor* c) {
  const FoldConstants* fc = static_cast<const FoldConstants*>(c->fold);
  uint32_t crc;
  if (Snap && Blend && c->last_active_words < kInlineBlendWords) {
    crc = compare_page_avx2<true, false, Crc>(c->o, c->n, c->snap, nullptr, c->pd, fc);
    copy_changed_blocks(c);
  } else {
    crc = compare_page_avx2<Snap, Blend, Crc>(c->o, c->n, c->snap, c->blend, c->pd, fc);
  }
  c->last_active_words = uint8_t(__builtin_popcountll(c->pd->active));
  c->w = 64;
  return ~crc;
}

// step_avx512<true, Blend> that also folds every block into a CRC32C (crc_fold.h): block w
// into lane w mod 4, so the page's checksum costs two carry-less multiplies per block already
// in a register.
template <bool Blend>
__attribute__((target("avx512f,avx512bw,vpclmulqdq,pclmul,sse4.2"))) void step_crc_avx512(DiffCursor* c) {
  const FoldConstants& fc = *static_cast<const FoldConstants*>(c->fold);
  const __m512i K = fold_k4(fc.k2048);
  __m512i zor = _mm512_load_si512(c->state);
  __m512i x[4];
  for (int j = 0; j < 4; j++) x[j] = _mm512_load_si512(c->state + 64 * (j + 1));
  for (int j = 0; j < kStepBlocks; j++) {
    int w = c->w + j;
    __m512i a = _mm512_loadu_si512(c->o + 64 * w);
    __m512i b = _mm512_loadu_si512(c->n + 64 * w);
    _mm512_store_si512(c->snap + 64 * w, b);
    zor = _mm512_or_si512(zor, b);
    __mmask64 m = _mm512_cmpneq_epi8_mask(a, b);
    if constexpr (Blend) _mm512_mask_storeu_epi8(c->blend + 64 * w, m, b);
    c->pd->neq[w] = m;
    int lane = j & 3;  // kStepBlocks is a multiple of 4: lane = w mod 4
    if (w < 4) x[lane] = w == 0 ? _mm512_xor_si512(b, _mm512_castsi128_si512(_mm_cvtsi32_si128(-1))) : b;
    else x[lane] = fold512(x[lane], K, b);
  }
  _mm512_store_si512(c->state, zor);
  for (int j = 0; j < 4; j++) _mm512_store_si512(c->state + 64 * (j + 1), x[j]);
  c->w += kStepBlocks;
}

__attribute__((target("avx512f,avx512bw,vpclmulqdq,pclmul,sse4.2"))) uint32_t crc_end_avx512(const DiffCursor* c) {
  const FoldConstants& fc = *static_cast<const FoldConstants*>(c->fold);
  return ~fold_finish(fc, _mm512_load_si512(c->state + 64), _mm512_load_si512(c->state + 128),
                      _mm512_load_si512(c->state + 192), _mm512_load_si512(c->state + 256));
}

__attribute__((target("avx512f,avx512bw,bmi,bmi2,popcnt"))) void finish_cursor_avx512(DiffCursor* c) {
  finish_diff_avx512(c->pd, _mm512_load_si512(c->state));
}
#endif
}  // namespace

void diff_begin(DiffCursor* c, Level l, const uint8_t* o, const uint8_t* n, uint8_t* snap, PageDiff* pd,
                bool want_crc, uint8_t* blend) {
  c->o = o;
  c->n = n;
  c->snap = snap;
  c->blend = blend;
  c->pd = pd;
  c->fold = nullptr;
  c->w = 0;
  c->finished = false;
  c->level = l;
#ifdef MIGSAFE_X86
  if (l == Level::Avx512) {
    memset(c->state, 0, 64);
    if (want_crc && snap) c->fold = crc32c_fold_constants();
    return;
  }
  if (l == Level::Avx2) {  // the pass runs whole in diff_end
    if (want_crc && snap) c->fold = crc32c_fold256_constants();
    return;
  }
#endif
  // Other levels: the whole pass now, against a copy of the new page when a snapshot is
  // wanted (same guarantee, one more pass); steps have nothing left to do.
  (void)want_crc;
  if (snap) {
    memcpy(snap, n, kPage);
    n = snap;
  }
  diff_page(l, o, n, pd);
  if (blend) blend_changed(*pd, n, blend);
  c->w = 64;
  c->finished = true;
}

void diff_step(DiffCursor* c) {
  if (c->w >= 64) return;
#ifdef MIGSAFE_X86
  if (c->level == Level::Avx2) return;  // see pass_avx2
  if (c->blend) {
    if (c->fold) step_crc_avx512<true>(c);
    else if (c->snap) step_avx512<true, true>(c);
    else step_avx512<false, true>(c);
  } else {
    if (c->fold) step_crc_avx512<false>(c);
    else if (c->snap) step_avx512<true, false>(c);
    else step_avx512<false, false>(c);
  }
#endif
}

bool diff_end(DiffCursor* c, uint32_t* crc) {
  if (c->finished) return false;  // the scalar level: done in diff_begin, no CRC
  c->finished = true;
#ifdef MIGSAFE_X86
  if (c->level == Level::Avx2) {
    if (c->fold) {  // set only with snap
      *crc = c->blend ? pass_avx2<true, true, true>(c) : pass_avx2<true, false, true>(c);
      return true;
    }
    if (c->blend) {
      if (c->snap) pass_avx2<true, true>(c);
      else pass_avx2<false, true>(c);
    } else {
      if (c->snap) pass_avx2<true, false>(c);
      else pass_avx2<false, false>(c);
    }
    return false;
  }
  while (c->w < 64) diff_step(c);
  finish_cursor_avx512(c);
  if (c->fold) {
    *crc = crc_end_avx512(c);
    return true;
  }
#endif
  return false;
}

void diff_page(Level l, const uint8_t* o, const uint8_t* n, PageDiff* pd) {
#ifdef MIGSAFE_X86
  if (l == Level::Avx512) return diff_avx512(o, n, pd);
  if (l == Level::Avx2) return diff_avx2(o, n, pd);
#endif
  (void)l;
  diff_scalar(o, n, pd);
}

namespace {
// Byte masks for 8 mask bits (bit k -> byte k all ones).
struct ByteMasks {
  uint64_t m[256];
  ByteMasks() {
    for (int v = 0; v < 256; v++) {
      m[v] = 0;
      for (int k = 0; k < 8; k++)
        if (v >> k & 1) m[v] |= 0xffULL << (8 * k);
    }
  }
};
}  // namespace

void blend_changed(const PageDiff& pd, const uint8_t* src, uint8_t* dst) {
  static const ByteMasks bm;
  for (uint64_t act = pd.active; act; act &= act - 1) {
    uint32_t w = uint32_t(__builtin_ctzll(act));
    for (int k = 0; k < 8; k++) {
      uint64_t mk = bm.m[(pd.neq[w] >> (8 * k)) & 0xff];
      if (!mk) continue;
      size_t off = 64 * w + 8 * k;
      uint64_t v = (load64(dst + off) & ~mk) | (load64(src + off) & mk);
      memcpy(dst + off, &v, 8);
    }
  }
}

int floor_compare(Level l, const uint8_t* a, const uint8_t* b) {
#ifdef MIGSAFE_X86
  if (l == Level::Avx512) return floor_avx512(a, b);
  if (l == Level::Avx2) return floor_avx2(a, b);
#endif
  (void)l;
  uint64_t acc = 0;
  for (size_t k = 0; k < kPage; k += 8) acc |= load64(a + k) ^ load64(b + k);
  return acc != 0;
}

bool pages_equal(Level l, const uint8_t* a, const uint8_t* b) {
#ifdef MIGSAFE_X86
  if (l == Level::Avx512) return equal_avx512(a, b);
  if (l == Level::Avx2) return equal_avx2(a, b);
#endif
  (void)l;
  return memcmp(a, b, kPage) == 0;
}

}  // namespace migsafe
