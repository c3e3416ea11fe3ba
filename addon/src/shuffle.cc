// Byte-plane shuffle of a page seen as 1024 little-endian 32-bit words: plane b holds byte b
// of every word. Pages of nearby integers (sorted arrays, counters, pointers into one region)
// get long runs of equal high bytes that LZ4 then finds. SSSE3 is part of the x86-64-v2
// baseline this addon is built for; other targets use the plain loops.
#include <cstring>

#if defined(__SSSE3__)
#include <tmmintrin.h>
#endif

#include "kernel.h"

namespace migsafe {

void shuffle4(const uint8_t* src, uint8_t* dst) {
#if defined(__SSSE3__)
  // Per 16 words: gather bytes by position inside each 16-byte vector, then transpose the
  // 4x4 block of 32-bit lanes so each vector holds 16 bytes of one plane.
  const __m128i g = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  for (size_t i = 0; i < 1024; i += 16) {
    __m128i a = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)(src + 4 * i)), g);
    __m128i b = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)(src + 4 * i + 16)), g);
    __m128i c = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)(src + 4 * i + 32)), g);
    __m128i d = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)(src + 4 * i + 48)), g);
    __m128i ab0 = _mm_unpacklo_epi32(a, b), ab1 = _mm_unpackhi_epi32(a, b);
    __m128i cd0 = _mm_unpacklo_epi32(c, d), cd1 = _mm_unpackhi_epi32(c, d);
    _mm_storeu_si128((__m128i*)(dst + i), _mm_unpacklo_epi64(ab0, cd0));
    _mm_storeu_si128((__m128i*)(dst + 1024 + i), _mm_unpackhi_epi64(ab0, cd0));
    _mm_storeu_si128((__m128i*)(dst + 2048 + i), _mm_unpacklo_epi64(ab1, cd1));
    _mm_storeu_si128((__m128i*)(dst + 3072 + i), _mm_unpackhi_epi64(ab1, cd1));
  }
#else
  for (size_t i = 0; i < 1024; i++)
    for (size_t b = 0; b < 4; b++) dst[b * 1024 + i] = src[4 * i + b];
#endif
}

void unshuffle4(const uint8_t* src, uint8_t* dst) {
#if defined(__SSSE3__)
  for (size_t i = 0; i < 1024; i += 16) {
    __m128i p0 = _mm_loadu_si128((const __m128i*)(src + i));
    __m128i p1 = _mm_loadu_si128((const __m128i*)(src + 1024 + i));
    __m128i p2 = _mm_loadu_si128((const __m128i*)(src + 2048 + i));
    __m128i p3 = _mm_loadu_si128((const __m128i*)(src + 3072 + i));
    __m128i a01 = _mm_unpacklo_epi8(p0, p1), b01 = _mm_unpackhi_epi8(p0, p1);
    __m128i a23 = _mm_unpacklo_epi8(p2, p3), b23 = _mm_unpackhi_epi8(p2, p3);
    _mm_storeu_si128((__m128i*)(dst + 4 * i), _mm_unpacklo_epi16(a01, a23));
    _mm_storeu_si128((__m128i*)(dst + 4 * i + 16), _mm_unpackhi_epi16(a01, a23));
    _mm_storeu_si128((__m128i*)(dst + 4 * i + 32), _mm_unpacklo_epi16(b01, b23));
    _mm_storeu_si128((__m128i*)(dst + 4 * i + 48), _mm_unpackhi_epi16(b01, b23));
  }
#else
  for (size_t i = 0; i < 1024; i++)
    for (size_t b = 0; b < 4; b++) dst[4 * i + b] = src[b * 1024 + i];
#endif
}

}  // namespace migsafe
