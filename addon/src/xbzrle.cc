// XBZRLE page delta (format of QEMU's migration/xbzrle.c, implemented independently):
//   page  = zrun nzrun | zrun nzrun page      (trailing unchanged run omitted)
//   zrun  = uleb128 length of an unchanged run (only the first may be 0)
//   nzrun = uleb128 length (> 0) followed by that many NEW bytes
// Lengths fit 14 bits (two ULEB128 bytes) since a page is 4096 bytes.
//
// Encoding is two passes: a SIMD compare pass turns the page pair into a 4096-bit
// changed-byte bitmap plus counts (diff_page), then a walker finds run boundaries with
// tzcnt on that bitmap and emits the bytes (encode_from_diff). The counts give an exact
// lower bound of the output size, so pages too dirty for a delta are rejected before walking.
#include <cstring>

#include "crc_fold.h"
#include "kernel.h"
#include "simd.h"

namespace migsafe {

namespace {

inline int uleb_put(uint8_t* p, uint32_t v) {  // v < 16384
  if (v < 0x80) {
    p[0] = uint8_t(v);
    return 1;
  }
  p[0] = uint8_t(v | 0x80);
  p[1] = uint8_t(v >> 7);
  return 2;
}

constexpr uint64_t kLo7 = 0x7f7f7f7f7f7f7f7fULL;
constexpr uint64_t kHi = 0x8080808080808080ULL;
// Gathers bit 8k of a word into bit 56+k (no two partial products collide, so no carries).
constexpr uint64_t kGather = 0x0102040810204080ULL;

// Exact copy of n bytes, no call for short runs: two overlapping moves cover any length in
// [k, 2k] without touching a byte outside the range (the decoder must not, unlike encoders).
inline void copy_exact(uint8_t* d, const uint8_t* s, size_t n) {
  if (n >= 32) {
    memcpy(d, s, n);
  } else if (n >= 16) {
    uint8_t a[16], b[16];
    memcpy(a, s, 16); memcpy(b, s + n - 16, 16);
    memcpy(d, a, 16); memcpy(d + n - 16, b, 16);
  } else if (n >= 8) {
    uint64_t a, b;
    memcpy(&a, s, 8); memcpy(&b, s + n - 8, 8);
    memcpy(d, &a, 8); memcpy(d + n - 8, &b, 8);
  } else if (n >= 4) {
    uint32_t a, b;
    memcpy(&a, s, 4); memcpy(&b, s + n - 4, 4);
    memcpy(d, &a, 4); memcpy(d + n - 4, &b, 4);
  } else if (n) {
    uint8_t a = s[0], b = s[n / 2], c = s[n - 1];
    d[0] = a; d[n / 2] = b; d[n - 1] = c;
  }
}

inline uint64_t load64(const uint8_t* p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

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

// First set bit at or after position i (< 4096) of the bitmap; 4096 if none.
inline uint32_t next_set(const uint64_t* bm, uint32_t i) {
  uint32_t w = i >> 6;
  uint64_t m = bm[w] & (~0ULL << (i & 63));
  while (!m) {
    if (++w == 64) return uint32_t(kPage);
    m = bm[w];
  }
  return (w << 6) + uint32_t(__builtin_ctzll(m));
}

inline uint32_t next_clear(const uint64_t* bm, uint32_t i) {
  uint32_t w = i >> 6;
  uint64_t m = ~bm[w] & (~0ULL << (i & 63));
  while (!m) {
    if (++w == 64) return uint32_t(kPage);
    m = ~bm[w];
  }
  return (w << 6) + uint32_t(__builtin_ctzll(m));
}

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

// Overflow checks sit exactly where QEMU's encoder (dlen = 4096) has them, so the set of
// pages that go whole is identical: before each unchanged run is emitted (including the
// omitted trailing one) d + 2 must fit, after its length d + 2 must fit, and after each
// changed-run length the run's bytes must fit.
int encode_from_diff(const PageDiff& pd, const uint8_t* nw, uint8_t* dst) {
  constexpr int kMax = int(kPage);
  if (pd.active == 0) return 0;
  int d = 0;
  uint32_t i = 0;
  for (;;) {
    uint32_t s = next_set(pd.neq, i);
    if (s == kPage) return d + 2 > kMax ? -1 : d;  // only a trailing unchanged run is left
    d += uleb_put(dst + d, s - i);
    if (d + 2 > kMax) return -1;
    uint32_t e = next_clear(pd.neq, s);
    uint32_t n = e - s;
    d += uleb_put(dst + d, n);
    if (d + int(n) > kMax) return -1;
    // Short runs dominate: copy 16/32 bytes unconditionally (dst has kDeltaCap slack) when the
    // source has room; the bytes past n are overwritten by the next run or ignored.
    if (n <= 16 && s <= kPage - 16) memcpy(dst + d, nw + s, 16);
    else if (n <= 32 && s <= kPage - 32) memcpy(dst + d, nw + s, 32);
    else memcpy(dst + d, nw + s, n);
    d += int(n);
    if (e == kPage) return d;
    i = e;
  }
}

namespace {

// Writes v (< 16384) as ULEB128 without branches: always stores two bytes, advances 1 or 2.
inline int uleb_put2(uint8_t* p, uint32_t v) {
  uint32_t big = v >= 0x80;
  uint16_t w = big ? uint16_t((v & 0x7f) | 0x80 | ((v >> 7) << 8)) : uint16_t(v);
  memcpy(p, &w, 2);
  return 1 + int(big);
}

}  // namespace

// Run boundaries are the set bits of m ^ (m << 1) (start of a changed run, then its end, ...).
// They are collected with tzcnt over the words that have any, then emitted pairwise, so the
// per-run work is a few adds, two two-byte stores and one 32-byte copy, with no data-dependent
// branch except for long runs. The overflow checks are QEMU's (see encode_from_diff).
namespace {

// Positions of the run boundaries, ascending, into b; returns how many. Run boundaries are
// the set bits of m ^ (m << 1 | carry). Only words that hold one are visited.
// Portable: simdjson-style flattening, 8 tzcnt/blsr steps per word unconditionally (entries
// past the count are garbage and ignored) instead of a loop whose exit mispredicts per word.
uint32_t flatten_scalar(const PageDiff& pd, uint16_t* b) {
  uint32_t nb = 0;
  for (uint64_t act = pd.active; act; act &= act - 1) {
    uint32_t w = uint32_t(__builtin_ctzll(act));
    uint64_t m = pd.neq[w];
    uint64_t t = m ^ ((m << 1) | (w ? pd.neq[w - 1] >> 63 : 0));
    uint32_t cnt = uint32_t(__builtin_popcountll(t));
    uint16_t base = uint16_t(w << 6);
    uint16_t* o = b + nb;
    for (int j = 0; j < 8; j++) {  // t | top bit: ctz stays defined once t runs out
      o[j] = uint16_t(base + __builtin_ctzll(t | (1ULL << 63)));
      t &= t - 1;
    }
    for (uint32_t j = 8; j < cnt; j++) {
      o[j] = uint16_t(base + __builtin_ctzll(t));
      t &= t - 1;
    }
    nb += cnt;
  }
  return nb;
}

#ifdef MIGSAFE_X86
// Positions of the set bits of every byte value, and how many (flatten_bmi's dense words).
struct BytePositions {
  alignas(16) uint16_t pos[256][8];
  uint8_t count[256];
  constexpr BytePositions() : pos(), count() {
    for (int v = 0; v < 256; v++) {
      int c = 0;
      for (int k = 0; k < 8; k++)
        if (v >> k & 1) pos[v][c++] = uint16_t(k);
      count[v] = uint8_t(c);
    }
  }
};
constexpr BytePositions kBytePositions;

// flatten_scalar with BMI1 (every AVX2 CPU has it): tzcnt of 0 is defined (64: a garbage
// entry past the count), so no guard bit, and blsr is one instruction. Plain 16-bit stores:
// GCC's vectorizer otherwise gathers the eight positions through xmm inserts, about twice
// the instructions. A word with more than 8 boundaries takes its 8 bytes from a table of
// positions instead (16-byte stores, entries past a byte's count overwritten by the next):
// a fixed cost, where the tzcnt loop's exit mispredicted (idle: flatten 20 % faster).
__attribute__((target("bmi,popcnt,sse2"), optimize("no-tree-slp-vectorize"))) uint32_t flatten_bmi(const PageDiff& pd,
                                                                                                    uint16_t* b) {
  uint32_t nb = 0;
  for (uint64_t act = pd.active; act; act = _blsr_u64(act)) {
    uint32_t w = uint32_t(_tzcnt_u64(act));
    uint64_t m = pd.neq[w];
    uint64_t t = m ^ ((m << 1) | (w ? pd.neq[w - 1] >> 63 : 0));
    uint32_t cnt = uint32_t(_mm_popcnt_u64(t));
    uint32_t base = w << 6;
    uint16_t* o = b + nb;
    if (cnt <= 8) {
      for (int j = 0; j < 8; j++) {
        o[j] = uint16_t(base + uint32_t(_tzcnt_u64(t)));
        t = _blsr_u64(t);
      }
    } else {
      __m128i vb = _mm_set1_epi16(short(base));
      const __m128i c8 = _mm_set1_epi16(8);
      uint32_t off = 0;
      for (int k = 0; k < 8; k++) {
        uint32_t v = uint32_t(t >> (8 * k)) & 0xff;
        _mm_storeu_si128((__m128i*)(o + off), _mm_add_epi16(_mm_load_si128((const __m128i*)kBytePositions.pos[v]), vb));
        off += kBytePositions.count[v];
        vb = _mm_add_epi16(vb, c8);
      }
    }
    nb += cnt;
  }
  return nb;
}
#endif

#ifdef MIGSAFE_X86
// AVX-512 VBMI2: one byte compress per word turns its boundary mask into positions 0..63,
// widened to 16 bits in two halves (the second half is garbage past the count, overwritten).
template <class Hook>
__attribute__((target("avx512f,avx512bw,avx512vbmi2,bmi,bmi2,popcnt")))
uint32_t flatten_vbmi2(const PageDiff& pd, uint16_t* b, Hook& hook) {
  const __m512i idx = _mm512_set_epi8(63, 62, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48,
                                      47, 46, 45, 44, 43, 42, 41, 40, 39, 38, 37, 36, 35, 34, 33, 32,
                                      31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16,
                                      15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  uint32_t nb = 0, k = 0;
  for (uint64_t act = pd.active; act; act &= act - 1) {
    uint32_t w = uint32_t(__builtin_ctzll(act));
    uint64_t m = pd.neq[w];
    uint64_t t = m ^ ((m << 1) | (w ? pd.neq[w - 1] >> 63 : 0));
    __m512i base = _mm512_set1_epi16(short(w << 6));
    __m512i pos = _mm512_maskz_compress_epi8(__mmask64(t), idx);
    _mm512_storeu_si512(b + nb, _mm512_add_epi16(_mm512_cvtepu8_epi16(_mm512_castsi512_si256(pos)), base));
    _mm512_storeu_si512(b + nb + 32, _mm512_add_epi16(_mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(pos, 1)), base));
    nb += uint32_t(__builtin_popcountll(t));
    if ((++k & 3) == 0) hook();
  }
  return nb;
}
#endif

}  // namespace

namespace {

// Copies run [s, s+n) of the page to d, in W-byte moves that may write past n (the caller's
// buffer has room; the next run overwrites the excess) but never read past the page. W = 64
// (one AVX-512 move each) where the caller is compiled for AVX-512.
template <uint32_t W = 32>
__attribute__((always_inline)) inline void copy_run(uint8_t* d, const uint8_t* page, uint32_t s, uint32_t n) {
  if (__builtin_expect(s <= kPage - W, 1)) {
    memcpy(d, page + s, W);
    for (uint32_t c = W; c < n; c += W) {
      if (s + c <= kPage - W) memcpy(d + c, page + s + c, W);
      else memcpy(d + c, page + s + c, n - c);
    }
  } else {
    memcpy(d, page + s, n);
  }
}

#ifdef MIGSAFE_X86
// Emits 16 runs per step: lengths, ULEB128 headers and output offsets (a prefix sum) are
// computed in 32-bit lanes, so the per-run scalar work is one 4-byte header store and the
// copy, with no dependency from one run to the next. b holds nb (even) boundaries and is
// readable 32 entries past the last group. Returns the output length; *dz = output position
// after the last unchanged-run header (for QEMU's overflow rule).
struct EmitState {
  int d = 0;          // output length so far
  int dz = 0;         // output position after the last unchanged-run header
  uint32_t prev = 0;  // end of the previous changed run
};

// The per-run loop of emit16 when every run fits one W-byte move (W = 32 or 64): qh holds
// (output offset, header) pairs, qd (data offset, source offset) pairs. NearEnd: some run
// starts within W bytes of the page's end, so the loads are masked to the page (a masked-out
// byte is never read, and cannot fault).
template <int W, bool NearEnd>
__attribute__((target("avx512f,avx512bw,bmi2"), always_inline)) inline void emit_short(
    const uint64_t* qh, const uint64_t* qd, uint32_t cnt, const uint8_t* nw, uint8_t* dst) {
  for (uint32_t j = 0; j < cnt; j++) {
    uint64_t a = qh[j], c = qd[j];
    uint32_t hv = uint32_t(a >> 32), src = uint32_t(c >> 32);
    memcpy(dst + uint32_t(a), &hv, 4);  // 4 bytes: the data move below overwrites the excess
    __m512i v;
    if constexpr (NearEnd) {
      uint32_t left = uint32_t(kPage) - src;  // bzhi reads only the index's low byte: clamp it
      v = _mm512_maskz_loadu_epi8(_bzhi_u64(~0ULL, left < 64 ? left : 64), nw + src);
    }
    if constexpr (W == 32) {
      if constexpr (!NearEnd) _mm256_storeu_si256((__m256i*)(dst + uint32_t(c)), _mm256_loadu_si256((const __m256i*)(nw + src)));
      else _mm256_storeu_si256((__m256i*)(dst + uint32_t(c)), _mm512_castsi512_si256(v));
    } else {
      if constexpr (!NearEnd) v = _mm512_loadu_si512(nw + src);
      _mm512_storeu_si512(dst + uint32_t(c), v);
    }
  }
}

// Emits runs k0 .. k0+cnt-1 (cnt <= 16): lengths, ULEB128 headers and output offsets (a
// prefix sum) are computed in 32-bit lanes, so the per-run scalar work is one 4-byte header
// store and the copy, with no dependency from one run to the next. b must be readable for 32
// entries from 2*k0.
__attribute__((target("avx512f,avx512bw,bmi,bmi2,popcnt")))
__attribute__((always_inline)) inline void emit16(const uint16_t* b, uint32_t k0, uint32_t cnt, const uint8_t* nw, uint8_t* dst,
                   EmitState& st) {
  // Even boundaries (run starts) to the low 16 words, odd ones (run ends) to the high 16.
  const __m512i split = _mm512_set_epi16(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1,
                                         30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i one = _mm512_set1_epi32(1), c80 = _mm512_set1_epi32(0x80), c128 = _mm512_set1_epi32(128);
  const __m512i zero = _mm512_setzero_si512();
  alignas(64) uint32_t off[16], doff[16], hdr[16], ss[16], ns[16];
  __mmask16 valid = __mmask16(cnt == 16 ? 0xffff : (1u << cnt) - 1);
  __m512i perm = _mm512_permutexvar_epi16(split, _mm512_loadu_si512(b + 2 * k0));
  __m512i s = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(perm));
  __m512i e = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(perm, 1));
  __m512i pe = _mm512_alignr_epi32(e, _mm512_set1_epi32(int(st.prev)), 15);  // previous run's end
  __m512i z = _mm512_sub_epi32(s, pe), n = _mm512_sub_epi32(e, s);
  __mmask16 zb = _mm512_cmpge_epu32_mask(z, c128), nbg = _mm512_cmpge_epu32_mask(n, c128);
  // ULEB128 of v >= 128 (two bytes, little-endian) is v + ((v >> 7) << 7) + 0x80.
  __m512i uz = _mm512_mask_add_epi32(z, zb, z, _mm512_add_epi32(_mm512_slli_epi32(_mm512_srli_epi32(z, 7), 7), c80));
  __m512i un = _mm512_mask_add_epi32(n, nbg, n, _mm512_add_epi32(_mm512_slli_epi32(_mm512_srli_epi32(n, 7), 7), c80));
  __m512i hz = _mm512_mask_add_epi32(one, zb, one, one), hn = _mm512_mask_add_epi32(one, nbg, one, one);
  __m512i h = _mm512_or_si512(uz, _mm512_sllv_epi32(un, _mm512_slli_epi32(hz, 3)));
  __m512i len = _mm512_maskz_add_epi32(valid, _mm512_add_epi32(hz, hn), n);
  __m512i p = _mm512_add_epi32(len, _mm512_alignr_epi32(len, zero, 15));  // inclusive prefix sum
  p = _mm512_add_epi32(p, _mm512_alignr_epi32(p, zero, 14));
  p = _mm512_add_epi32(p, _mm512_alignr_epi32(p, zero, 12));
  p = _mm512_add_epi32(p, _mm512_alignr_epi32(p, zero, 8));
  __m512i o = _mm512_add_epi32(_mm512_sub_epi32(p, len), _mm512_set1_epi32(st.d));
  __m512i dof = _mm512_add_epi32(o, _mm512_add_epi32(hz, hn));
  _mm512_store_si512(doff, dof);
  _mm512_store_si512(ss, s);
  _mm512_store_si512(ns, n);
  const __m512i c32 = _mm512_set1_epi32(32), c64 = _mm512_set1_epi32(64);
  const __m512i cend32 = _mm512_set1_epi32(int(kPage - 32)), cend64 = _mm512_set1_epi32(int(kPage - 64));
  __mmask16 over32 = _mm512_mask_cmpgt_epu32_mask(valid, n, c32);
  __mmask16 over64 = _mm512_mask_cmpgt_epu32_mask(valid, n, c64);
  if (!over64) {
    // Every run fits one 32-byte (or 64-byte) move, the common case: per run two 8-byte loads,
    // a 4-byte header store and one move, no branch. (offset, header) and (data offset,
    // source) are interleaved into 64-bit lanes so that each pair is one load.
    __mmask16 near = _mm512_mask_cmpgt_epu32_mask(valid, s, over32 ? cend64 : cend32);
    const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
    alignas(64) uint64_t qh[16], qd[16];
    _mm512_store_si512(qh, _mm512_permutex2var_epi32(o, lo, h));
    _mm512_store_si512(qh + 8, _mm512_permutex2var_epi32(o, hi, h));
    _mm512_store_si512(qd, _mm512_permutex2var_epi32(dof, lo, s));
    _mm512_store_si512(qd + 8, _mm512_permutex2var_epi32(dof, hi, s));
    if (!over32) {
      if (!near) emit_short<32, false>(qh, qd, cnt, nw, dst);
      else emit_short<32, true>(qh, qd, cnt, nw, dst);  // the page's last group
    } else {
      if (!near) emit_short<64, false>(qh, qd, cnt, nw, dst);  // dense pages: runs up to 64 bytes
      else emit_short<64, true>(qh, qd, cnt, nw, dst);
    }
  } else {
    _mm512_store_si512(off, o);
    _mm512_store_si512(hdr, h);
    // Some run is longer than 64 bytes: 64-byte moves, looped only for the long ones.
    for (uint32_t j = 0; j < cnt; j++) {
      memcpy(dst + off[j], &hdr[j], 4);
      copy_run<64>(dst + doff[j], nw, ss[j], ns[j]);
    }
  }
  // The next group depends only on these two, computed without the stores above (a chain
  // through memory would serialize the groups).
  uint32_t last = cnt - 1;
  st.d += _mm_extract_epi32(_mm512_extracti32x4_epi32(p, 3), 3);  // lane 15: the group's bytes
  st.prev = b[2 * (k0 + last) + 1];
  st.dz = int(doff[last] - (ns[last] >= 128 ? 2 : 1));
}

// Hook: called between groups of runs (see encode_diff_overlapped).
template <class Hook>
__attribute__((target("avx512f,avx512bw,bmi,bmi2,popcnt")))
int emit_avx512(const uint16_t* b, uint32_t nb, const uint8_t* nw, uint8_t* dst, int* dz, Hook& hook) {
  EmitState st;
  for (uint32_t k0 = 0; k0 < nb / 2; k0 += 16) {
    emit16(b, k0, nb / 2 - k0 < 16 ? nb / 2 - k0 : 16, nw, dst, st);
    hook();
  }
  *dz = st.dz;
  return st.d;
}

// emit16 at the AVX2 level: 8 runs per step, the same lane arithmetic in 256-bit registers. Runs of
// at most 32 bytes that start at least 32 bytes before the page's end (nearly all) take two
// 8-byte loads, a 4-byte header store and one 32-byte move each; a group with any other run
// goes through copy_run.
__attribute__((target("avx2,bmi,bmi2,popcnt"), always_inline)) inline void emit8(
    const uint16_t* b, uint32_t k0, uint32_t cnt, const uint8_t* nw, uint8_t* dst, EmitState& st) {
  const __m256i lo16 = _mm256_set1_epi32(0xffff), c127 = _mm256_set1_epi32(127), c80 = _mm256_set1_epi32(0x80);
  const __m256i one = _mm256_set1_epi32(1);
  __m256i v = _mm256_loadu_si256((const __m256i*)(b + 2 * k0));  // (start, end) pairs
  __m256i s = _mm256_and_si256(v, lo16), e = _mm256_srli_epi32(v, 16);
  __m256i pe = _mm256_blend_epi32(_mm256_permutevar8x32_epi32(e, _mm256_setr_epi32(0, 0, 1, 2, 3, 4, 5, 6)),
                                  _mm256_set1_epi32(int(st.prev)), 1);  // previous run's end
  __m256i z = _mm256_sub_epi32(s, pe), n = _mm256_sub_epi32(e, s);
  __m256i zb = _mm256_cmpgt_epi32(z, c127), nbg = _mm256_cmpgt_epi32(n, c127);  // two-byte lengths
  __m256i uz = _mm256_add_epi32(z, _mm256_and_si256(zb, _mm256_add_epi32(_mm256_slli_epi32(_mm256_srli_epi32(z, 7), 7), c80)));
  __m256i un = _mm256_add_epi32(n, _mm256_and_si256(nbg, _mm256_add_epi32(_mm256_slli_epi32(_mm256_srli_epi32(n, 7), 7), c80)));
  __m256i hz = _mm256_sub_epi32(one, zb), hn = _mm256_sub_epi32(one, nbg);
  __m256i h = _mm256_or_si256(uz, _mm256_sllv_epi32(un, _mm256_slli_epi32(hz, 3)));
  __m256i valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(cnt)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  __m256i hl = _mm256_add_epi32(hz, hn);
  __m256i len = _mm256_and_si256(valid, _mm256_add_epi32(hl, n));
  __m256i p = _mm256_add_epi32(len, _mm256_slli_si256(len, 4));  // inclusive prefix sum per half,
  p = _mm256_add_epi32(p, _mm256_slli_si256(p, 8));
  __m256i top = _mm256_shuffle_epi32(p, 0xff);                    // then the low half's total
  p = _mm256_add_epi32(p, _mm256_permute2x128_si256(top, top, 0x08));  // into the high half
  __m256i o = _mm256_add_epi32(_mm256_sub_epi32(p, len), _mm256_set1_epi32(st.d));
  __m256i dof = _mm256_add_epi32(o, hl);
  alignas(32) uint32_t nn[8], dd[8];
  _mm256_store_si256((__m256i*)nn, n);
  _mm256_store_si256((__m256i*)dd, dof);
  __m256i slow = _mm256_and_si256(valid, _mm256_or_si256(_mm256_cmpgt_epi32(n, _mm256_set1_epi32(32)),
                                                         _mm256_cmpgt_epi32(s, _mm256_set1_epi32(int(kPage - 32)))));
  if (_mm256_testz_si256(slow, slow)) {
    // (offset, header) and (data offset, source) interleaved into 64-bit lanes, in run order.
    __m256i a0 = _mm256_unpacklo_epi32(o, h), a1 = _mm256_unpackhi_epi32(o, h);
    __m256i c0 = _mm256_unpacklo_epi32(dof, s), c1 = _mm256_unpackhi_epi32(dof, s);
    alignas(32) uint64_t qh[8], qd[8];
    _mm256_store_si256((__m256i*)qh, _mm256_permute2x128_si256(a0, a1, 0x20));
    _mm256_store_si256((__m256i*)(qh + 4), _mm256_permute2x128_si256(a0, a1, 0x31));
    _mm256_store_si256((__m256i*)qd, _mm256_permute2x128_si256(c0, c1, 0x20));
    _mm256_store_si256((__m256i*)(qd + 4), _mm256_permute2x128_si256(c0, c1, 0x31));
    for (uint32_t j = 0; j < cnt; j++) {
      uint64_t a = qh[j], c = qd[j];
      uint32_t hv = uint32_t(a >> 32);
      memcpy(dst + uint32_t(a), &hv, 4);  // 4 bytes: the data move below overwrites the excess
      _mm256_storeu_si256((__m256i*)(dst + uint32_t(c)), _mm256_loadu_si256((const __m256i*)(nw + (c >> 32))));
    }
  } else {
    alignas(32) uint32_t oo[8], hh[8], ss[8];
    _mm256_store_si256((__m256i*)oo, o);
    _mm256_store_si256((__m256i*)hh, h);
    _mm256_store_si256((__m256i*)ss, s);
    for (uint32_t j = 0; j < cnt; j++) {
      memcpy(dst + oo[j], &hh[j], 4);
      copy_run<32>(dst + dd[j], nw, ss[j], nn[j]);
    }
  }
  uint32_t last = cnt - 1;
  st.d += _mm256_extract_epi32(p, 7);  // the group's bytes (lanes past cnt add 0)
  st.prev = b[2 * (k0 + last) + 1];
  st.dz = int(dd[last] - (nn[last] >= 128 ? 2 : 1));
}

template <class Hook>
__attribute__((target("avx2,bmi,bmi2,popcnt")))
int emit_avx2(const uint16_t* b, uint32_t nb, const uint8_t* nw, uint8_t* dst, int* dz, Hook& hook) {
  EmitState st;
  for (uint32_t k0 = 0; k0 < nb / 2; k0 += 8) {
    emit8(b, k0, nb / 2 - k0 < 8 ? nb / 2 - k0 : 8, nw, dst, st);
    hook();
  }
  *dz = st.dz;
  return st.d;
}

#endif

}  // namespace

namespace {

struct NoHook {
  void operator()() const {}
};

// Advances the next page's compare pass by one step.
struct StepHook {
  DiffCursor* next;
  void operator()() const { diff_step(next); }
};

template <class Hook>
int encode_diff_t(Level l, const PageDiff& pd, const uint8_t* nw, uint8_t* dst, Hook& hook) {
  constexpr int kMax = int(kPage);
  if (pd.active == 0) return 0;
  // Beyond a page, QEMU would overflow too. The compare pass counted changed bytes and runs,
  // so a page too dirty for a delta is rejected before any run is looked at.
  if (delta_size_floor(pd) > kPage) return -1;
  uint16_t b[kPage + 2 + 64];  // +64: room for the flatteners' unconditional writes
  uint32_t nb;
#ifdef MIGSAFE_X86
  if (l == Level::Avx512 && cpu_has_vbmi2()) nb = flatten_vbmi2(pd, b, hook);
  else if (l != Level::Scalar) nb = flatten_bmi(pd, b);
  else
#endif
    nb = flatten_scalar(pd, b);
  (void)l;
  bool trailing = !(nb & 1);  // an even count means the last run ends before the page does
  if (!trailing) b[nb++] = uint16_t(kPage);
  // No checks inside the loop: after the test above the output is at most
  // changed + 4 * runs <= 8192 bytes (kDeltaCap), and since d only grows, QEMU's per-run
  // overflow tests reduce to three tests on the final positions.
  int d = 0, dz = 0;
#ifdef MIGSAFE_X86
  if (l == Level::Avx512) {
    d = emit_avx512(b, nb, nw, dst, &dz, hook);
  } else if (l == Level::Avx2) {
    d = emit_avx2(b, nb, nw, dst, &dz, hook);
  } else
#endif
  {
    uint32_t prev = 0;
    for (uint32_t k = 0; k < nb; k += 2) {
      uint32_t s = b[k], e = b[k + 1], n = e - s;
      d += uleb_put2(dst + d, s - prev);
      dz = d;
      d += uleb_put2(dst + d, n);
      copy_run(dst + d, nw, s, n);
      d += int(n);
      prev = e;
    }
  }
  if (dz + 2 > kMax || d > kMax || (trailing && d + 2 > kMax)) return -1;
  return d;
}

}  // namespace

int encode_diff(Level l, const PageDiff& pd, const uint8_t* nw, uint8_t* dst) {
  NoHook h;
  return encode_diff_t(l, pd, nw, dst, h);
}

int encode_diff_overlapped(Level l, const PageDiff& pd, const uint8_t* nw, uint8_t* dst, DiffCursor* next) {
  if (!next) return encode_diff(l, pd, nw, dst);
  StepHook h{next};
  return encode_diff_t(l, pd, nw, dst, h);
}

int encode_page(Level l, const uint8_t* o, const uint8_t* n, uint8_t* dst) {
  // Two passes (compare, then walk the bitmap) measured faster here than a fused single pass
  // that walks runs while loading: that one pays a branch per block with a run boundary.
  PageDiff pd;
  diff_page(l, o, n, &pd);
  return encode_diff(l, pd, n, dst);
}

// Word-at-a-time, single pass, the way QEMU's C encoder is structured: grow the unchanged
// run 8 bytes at a time while words are equal, then the changed run 8 bytes at a time while
// no byte of the XOR word is zero, finishing each run bytewise.
int encode_page_wordwise(const uint8_t* o, const uint8_t* n, uint8_t* dst) {
  constexpr int kMax = int(kPage);
  int d = 0;
  uint32_t i = 0;
  while (i < kPage) {
    if (d + 2 > kMax) return -1;
    uint32_t z0 = i;
    while (i < kPage && (i & 7) && o[i] == n[i]) i++;
    if (!(i & 7))
      while (i < kPage && load64(o + i) == load64(n + i)) i += 8;
    while (i < kPage && o[i] == n[i]) i++;
    if (i == kPage) return z0 == 0 ? 0 : d;
    d += uleb_put(dst + d, i - z0);
    if (d + 2 > kMax) return -1;
    uint32_t s = i;
    while (i < kPage && (i & 7) && o[i] != n[i]) i++;
    if (i < kPage && !(i & 7)) {
      for (;;) {
        uint64_t x = load64(o + i) ^ load64(n + i);
        if ((x - 0x0101010101010101ULL) & ~x & kHi) {  // some byte of x is zero
          while (o[i] != n[i]) i++;
          break;
        }
        i += 8;
        if (i == kPage) break;
      }
    }
    uint32_t len = i - s;
    d += uleb_put(dst + d, len);
    if (d + int(len) > kMax) return -1;
    memcpy(dst + d, n + s, len);
    d += int(len);
  }
  return d;
}

int decode_page(const uint8_t* src, size_t slen, uint8_t* page, const char** err) {
  if (slen > kPage) {
    *err = "delta longer than a page";
    return -1;
  }
  size_t i = 0, d = 0;
  // Reads one length; the caller has checked that two bytes remain.
  auto get = [&](uint32_t* v) -> bool {
    uint8_t b0 = src[i];
    if (!(b0 & 0x80)) {
      *v = b0;
      i += 1;
      return true;
    }
    uint8_t b1 = src[i + 1];
    if (b1 & 0x80) return false;  // more than 14 bits: QEMU refuses it as well
    *v = uint32_t(b0 & 0x7f) | uint32_t(b1) << 7;
    i += 2;
    return true;
  };
  while (i < slen) {
    uint32_t count;
    if (slen - i < 2) { *err = "truncated delta: unchanged run without a changed run"; return -1; }
    bool first = i == 0;
    if (!get(&count)) { *err = "malformed length (more than 14 bits)"; return -1; }
    if (!first && count == 0) { *err = "empty unchanged run"; return -1; }
    d += count;
    if (d > kPage) { *err = "delta runs past the end of the page"; return -1; }
    if (slen - i < 2) { *err = "truncated delta: changed run missing"; return -1; }
    if (!get(&count)) { *err = "malformed length (more than 14 bits)"; return -1; }
    if (count == 0) { *err = "empty changed run"; return -1; }
    if (d + count > kPage) { *err = "delta runs past the end of the page"; return -1; }
    if (i + count > slen) { *err = "truncated delta: changed bytes missing"; return -1; }
    copy_exact(page + d, src + i, count);
    d += count;
    i += count;
  }
  return 0;
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
