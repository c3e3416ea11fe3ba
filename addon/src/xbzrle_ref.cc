// The plain XBZRLE encoders (encode_from_diff, one run at a time over the bitmap; the
// QEMU-style word-at-a-time encoder, the benchmark's baseline and an independent cross-check)
// and the decoder.
#include <cstring>

#include "kernel.h"
#include "xbzrle.h"

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

}  // namespace migsafe
