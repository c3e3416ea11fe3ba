// XBZRLE's second pass at each level: a walker finds the run boundaries with tzcnt on the
// compare pass's bitmap (flatten) and emits the bytes (emit), with QEMU's overflow rule.
#include <cstring>

#include "kernel.h"
#include "simd.h"

namespace migsafe {

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

}  // namespace migsafe
