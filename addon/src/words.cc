// Packed words: a dense page as the 32-bit words that changed, frame-of-reference bit-packed
// (batch record kind 4, see batch.h). Pages that XBZRLE cannot shrink are mostly integers
// rewritten wholesale (a sort moving values, a table refilled), and values on one page tend
// to share a range: 64 values between min and max need bit_length(max - min) bits each, not 32.
// Unchanged words cost one bitmap bit, so a half-rewritten page pays only for its changes.
//
// Payload, little-endian:
//   128 bytes  bitmap, bit w (byte w/8, bit w%8) = 32-bit word w is replaced
//   per group of 64 replaced words in page order (the last group may be shorter, m values):
//     u32 base, u8 width (0..32), ceil(width * m / 8) bytes: value - base (mod 2^32) in
//     width bits each, least significant bit first
// The payload is exact: at least one word replaced, padding bits zero, no trailing bytes.
#include <array>
#include <cstring>
#include <utility>

#include "kernel.h"
#include "simd.h"

namespace migsafe {

namespace {

constexpr size_t kGroup = 64;
constexpr size_t kBitmap = kPage / 32;

inline uint32_t ld32(const uint8_t* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
inline void st32(uint8_t* p, uint32_t v) { memcpy(p, &v, 4); }
inline void st64(uint8_t* p, uint64_t v) { memcpy(p, &v, 8); }
inline uint64_t ld64(const uint8_t* p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

// neq holds one bit per byte for 64 bytes (16 words): bit i of the result = word i changed.
inline uint32_t word_mask16(uint64_t x) {
  x |= x >> 1;
  x |= x >> 2;
  x &= 0x1111111111111111ULL;
  x = (x | x >> 3) & 0x0303030303030303ULL;
  x = (x | x >> 6) & 0x000f000f000f000fULL;
  x = (x | x >> 12) & 0x000000ff000000ffULL;
  return uint32_t((x | x >> 24) & 0xffff);
}

inline int bit_length(uint32_t x) { return x ? 32 - __builtin_clz(x) : 0; }

// 64 values in W bits each, exactly 8 * W bytes; shifts are constants once unrolled.
template <int W>
void pack_group(const uint32_t* v, uint32_t base, uint8_t* out) {
  if constexpr (W == 0) {
    (void)v, (void)base, (void)out;
  } else {
    uint64_t acc = 0;
    int fill = 0;
#pragma GCC unroll 64
    for (int i = 0; i < 64; i++) {
      uint64_t x = uint64_t(uint32_t(v[i] - base));
      acc |= x << fill;
      fill += W;
      if (fill >= 64) {
        st64(out, acc);
        out += 8;
        fill -= 64;
        acc = fill ? x >> (W - fill) : 0;
      }
    }
  }
}

using PackFn = void (*)(const uint32_t*, uint32_t, uint8_t*);
template <int... W>
constexpr auto make_packers(std::integer_sequence<int, W...>) {
  return std::array<PackFn, sizeof...(W)>{&pack_group<W>...};
}

struct MinMax {
  int32_t lo, hi;
};

MinMax min_max(const uint32_t* v, size_t m) {
  int32_t lo = int32_t(v[0]), hi = lo;
  for (size_t i = 1; i < m; i++) {
    int32_t x = int32_t(v[i]);
    lo = x < lo ? x : lo;
    hi = x > hi ? x : hi;
  }
  return {lo, hi};
}

// Replaced words in page order; returns their count and writes the bitmap.
size_t gather_portable(const PageDiff& pd, const uint8_t* page, uint8_t* bitmap, uint32_t* vals) {
  size_t cnt = 0;
  for (size_t j = 0; j < kPage / 64; j++) {
    uint32_t m = word_mask16(pd.neq[j]);
    bitmap[2 * j] = uint8_t(m);
    bitmap[2 * j + 1] = uint8_t(m >> 8);
    while (m) {
      vals[cnt++] = ld32(page + 64 * j + 4 * size_t(__builtin_ctz(m)));
      m &= m - 1;
    }
  }
  return cnt;
}

#if MIGSAFE_X86
__attribute__((target("avx512f,avx512bw,bmi2,popcnt"))) size_t gather_avx512(const PageDiff& pd, const uint8_t* page,
                                                                            uint8_t* bitmap, uint32_t* vals) {
  size_t cnt = 0;
  for (size_t j = 0; j < kPage / 64; j++) {
    uint64_t x = pd.neq[j];
    x |= x >> 1;
    x |= x >> 2;
    uint32_t m = uint32_t(_pext_u64(x, 0x1111111111111111ULL));
    bitmap[2 * j] = uint8_t(m);
    bitmap[2 * j + 1] = uint8_t(m >> 8);
    __m512i w = _mm512_maskz_compress_epi32(__mmask16(m), _mm512_loadu_si512(page + 64 * j));
    _mm512_storeu_si512(vals + cnt, w);  // vals has 16 words of slack
    cnt += size_t(_mm_popcnt_u32(m));
  }
  return cnt;
}

__attribute__((target("avx512f"))) MinMax min_max_avx512(const uint32_t* v, size_t m) {
  __m512i lo = _mm512_set1_epi32(INT32_MAX), hi = _mm512_set1_epi32(INT32_MIN);
  for (size_t i = 0; i < m; i += 16) {
    __mmask16 k = m - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (m - i)) - 1);
    __m512i x = _mm512_maskz_loadu_epi32(k, v + i);
    lo = _mm512_mask_min_epi32(lo, k, lo, x);
    hi = _mm512_mask_max_epi32(hi, k, hi, x);
  }
  return {_mm512_reduce_min_epi32(lo), _mm512_reduce_max_epi32(hi)};
}
#endif

}  // namespace

int words_encode(Level l, const PageDiff& pd, const uint8_t* page, uint8_t* dst) {
  static constexpr auto packers = make_packers(std::make_integer_sequence<int, 33>{});
  alignas(64) uint32_t vals[kPage / 4 + 16 + kGroup];
  size_t cnt;
#if MIGSAFE_X86
  const bool simd = l == Level::Avx512;
  cnt = simd ? gather_avx512(pd, page, dst, vals) : gather_portable(pd, page, dst, vals);
#else
  (void)l;
  cnt = gather_portable(pd, page, dst, vals);
#endif
  if (cnt == 0) return -1;
  uint8_t* o = dst + kBitmap;
  for (size_t g = 0; g < cnt; g += kGroup) {
    size_t m = cnt - g < kGroup ? cnt - g : kGroup;
#if MIGSAFE_X86
    MinMax mm = simd ? min_max_avx512(vals + g, m) : min_max(vals + g, m);
#else
    MinMax mm = min_max(vals + g, m);
#endif
    uint32_t base = uint32_t(mm.lo);
    int w = bit_length(uint32_t(mm.hi) - base);
    // A short last group is padded with base (packs to zero bits past its m values).
    for (size_t i = m; i < kGroup; i++) vals[g + i] = base;
    st32(o, base);
    o[4] = uint8_t(w);
    packers[size_t(w)](vals + g, base, o + 5);
    o += 5 + (size_t(w) * m + 7) / 8;
  }
  return int(o - dst);
}

int words_decode(const uint8_t* src, size_t len, uint8_t* page, const char** err) {
  if (len < kBitmap) {
    *err = "shorter than its 128-byte bitmap";
    return -1;
  }
  size_t cnt = 0;
  for (size_t i = 0; i < kBitmap; i += 8) cnt += size_t(__builtin_popcountll(ld64(src + i)));
  if (cnt == 0) {
    *err = "the bitmap marks no word";
    return -1;
  }
  size_t pos = kBitmap, word = 0;
  for (size_t g = 0; g < cnt; g += kGroup) {
    size_t m = cnt - g < kGroup ? cnt - g : kGroup;
    if (len - pos < 5) {
      *err = "truncated group header";
      return -1;
    }
    uint32_t base = ld32(src + pos);
    unsigned w = src[pos + 4];
    if (w > 32) {
      *err = "width over 32 bits";
      return -1;
    }
    size_t nb = (w * m + 7) / 8;
    pos += 5;
    if (len - pos < nb) {
      *err = "truncated values";
      return -1;
    }
    // Unpack from a padded copy: 8-byte loads never read past the payload.
    uint8_t buf[kGroup * 4 + 8] = {};
    memcpy(buf, src + pos, nb);
    if ((w * m) % 8 && buf[nb - 1] >> ((w * m) % 8)) {
      *err = "padding bits are not zero";
      return -1;
    }
    const uint64_t mask = w == 32 ? 0xffffffffULL : (1ULL << w) - 1;
    for (size_t i = 0; i < m; i++) {
      while (!(src[word >> 3] >> (word & 7) & 1)) word++;  // cnt bits are set: ends in range
      size_t bit = i * w;
      uint32_t x = uint32_t(ld64(buf + (bit >> 3)) >> (bit & 7) & mask);
      st32(page + 4 * word, base + x);
      word++;
    }
    pos += nb;
  }
  if (pos != len) {
    *err = "trailing bytes";
    return -1;
  }
  return 0;
}

}  // namespace migsafe
