// Byte planes back to a page of 1024 little-endian 32-bit words (plane b holds byte b of every
// word): batch record kind 3, which earlier builds wrote for dense pages of nearby integers and
// which stored checkpoints may still hold. SSSE3 is part of the x86-64-v2 baseline this addon
// is built for; other targets use the plain loop.
#include <cstring>

#if defined(__SSSE3__)
#include <tmmintrin.h>
#endif

#include "kernel.h"

namespace migsafe {

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
