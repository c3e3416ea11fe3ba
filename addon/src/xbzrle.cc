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

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MIGSAFE_X86 1
#endif

#include "kernel.h"

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

inline void finish_word(PageDiff* pd, int w, uint64_t m, uint64_t& prev_top, uint32_t& changed,
                        uint32_t& runs) {
  pd->neq[w] = m;
  changed += uint32_t(__builtin_popcountll(m));
  runs += uint32_t(__builtin_popcountll(m & ~((m << 1) | prev_top)));
  prev_top = m >> 63;
}

void diff_scalar(const uint8_t* o, const uint8_t* n, PageDiff* pd) {
  uint64_t prev_top = 0, zor = 0;
  uint32_t changed = 0, runs = 0;
  for (int w = 0; w < 64; w++) {
    uint64_t m = 0;
    for (int k = 0; k < 8; k++) {
      uint64_t nv = load64(n + 64 * w + 8 * k);
      zor |= nv;
      m |= uint64_t(nonzero_bytes(load64(o + 64 * w + 8 * k) ^ nv)) << (8 * k);
    }
    finish_word(pd, w, m, prev_top, changed, runs);
  }
  pd->changed = changed;
  pd->runs = runs;
  pd->new_zero = zor == 0;
}

#ifdef MIGSAFE_X86
__attribute__((target("avx2,bmi,bmi2,popcnt"))) void diff_avx2(const uint8_t* o, const uint8_t* n,
                                                                 PageDiff* pd) {
  uint64_t prev_top = 0;
  uint32_t changed = 0, runs = 0;
  __m256i zor = _mm256_setzero_si256();
  for (int w = 0; w < 64; w++) {
    __m256i a0 = _mm256_loadu_si256((const __m256i*)(o + 64 * w));
    __m256i a1 = _mm256_loadu_si256((const __m256i*)(o + 64 * w + 32));
    __m256i b0 = _mm256_loadu_si256((const __m256i*)(n + 64 * w));
    __m256i b1 = _mm256_loadu_si256((const __m256i*)(n + 64 * w + 32));
    zor = _mm256_or_si256(zor, _mm256_or_si256(b0, b1));
    uint32_t e0 = uint32_t(_mm256_movemask_epi8(_mm256_cmpeq_epi8(a0, b0)));
    uint32_t e1 = uint32_t(_mm256_movemask_epi8(_mm256_cmpeq_epi8(a1, b1)));
    finish_word(pd, w, ~(uint64_t(e1) << 32 | e0), prev_top, changed, runs);
  }
  pd->changed = changed;
  pd->runs = runs;
  pd->new_zero = _mm256_testz_si256(zor, zor);
}

__attribute__((target("avx512f,avx512bw,bmi,bmi2,popcnt"))) void diff_avx512(const uint8_t* o,
                                                                                const uint8_t* n,
                                                                                PageDiff* pd) {
  uint64_t prev_top = 0;
  uint32_t changed = 0, runs = 0;
  __m512i zor = _mm512_setzero_si512();
  for (int w = 0; w < 64; w++) {
    __m512i a = _mm512_loadu_si512(o + 64 * w);
    __m512i b = _mm512_loadu_si512(n + 64 * w);
    zor = _mm512_or_si512(zor, b);
    finish_word(pd, w, _mm512_cmpneq_epi8_mask(a, b), prev_top, changed, runs);
  }
  pd->changed = changed;
  pd->runs = runs;
  pd->new_zero = _mm512_test_epi64_mask(zor, zor) == 0;
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
  if (pd.changed == 0) return 0;
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

int encode_page(Level l, const uint8_t* o, const uint8_t* n, uint8_t* dst) {
  PageDiff pd;
  diff_page(l, o, n, &pd);
  // Every changed run costs its bytes plus at least one length byte for itself and one for
  // the unchanged run before it: beyond a page, QEMU would overflow too.
  if (pd.changed + 2 * pd.runs > kPage) return -1;
  return encode_from_diff(pd, n, dst);
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
    memcpy(page + d, src + i, count);
    d += count;
    i += count;
  }
  return 0;
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
