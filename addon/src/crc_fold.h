// CRC32C by carry-less folding (VPCLMULQDQ on 512-bit or 256-bit registers), shared by
// crc32c.cc and the batch's compare pass, which folds each block of the page while it has it
// in a register.
//
// A 128-bit lane loaded little-endian holds bit i of the stream as the coefficient of
// x^(127-i), so its low qword is the high-degree half H and its high qword the low half L.
// Moving a lane forward by D bits is X*x^D = H*x^(D+64) + L*x^D; with the constants stored as
// x^(D+63) and x^(D-1) mod P (bit c at bit 63-c) the 64x64 carry-less products land exactly in
// lane order. What is left at the end is one 16-byte chunk congruent to the whole buffer,
// finished with the crc32 instruction.
#pragma once
#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>

namespace migsafe {

struct FoldConstants {
  uint64_t k2048[2], k1024[2], k512[2], k384[2], k256[2], k128[2];
  // Moves a 16-byte chunk at byte 2048 + 512 * i of a 4096-byte buffer to its last 16 bytes:
  // distances 8 * (2032 - 512 * i) bits, i = 0..3 (crc32c.cc's page of two halves).
  uint64_t k_to_end[4][2];
};

// Null when the CPU lacks AVX-512 VPCLMULQDQ (or SSE4.2).
const FoldConstants* crc32c_fold_constants();
// Null when the CPU lacks VPCLMULQDQ on 256-bit registers with AVX2 (or SSE4.2).
const FoldConstants* crc32c_fold256_constants();

#define MIGSAFE_FOLD_TARGET __attribute__((target("avx512f,vpclmulqdq,pclmul,sse4.2")))

MIGSAFE_FOLD_TARGET inline __m512i fold_k4(const uint64_t* k) {
  return _mm512_broadcast_i32x4(_mm_set_epi64x((long long)(k[1]), (long long)(k[0])));
}

// x moved forward by the constants' distance, xor next.
MIGSAFE_FOLD_TARGET inline __m512i fold512(__m512i x, __m512i k, __m512i next) {
  return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k, 0x00), _mm512_clmulepi64_epi128(x, k, 0x11),
                                   next, 0x96);
}

__attribute__((target("pclmul,sse4.2"))) inline __m128i fold128(__m128i x, const uint64_t* k, __m128i acc) {
  __m128i kk = _mm_set_epi64x((long long)(k[1]), (long long)(k[0]));
  return _mm_xor_si128(acc, _mm_xor_si128(_mm_clmulepi64_si128(x, kk, 0x00), _mm_clmulepi64_si128(x, kk, 0x11)));
}

// The one 16-byte chunk every fold ends in (congruent to the whole buffer) -> raw CRC state.
__attribute__((target("sse4.2"))) inline uint32_t crc_of_last16(__m128i r) {
  uint64_t c = _mm_crc32_u64(0, uint64_t(_mm_cvtsi128_si64(r)));
  return uint32_t(_mm_crc32_u64(c, uint64_t(_mm_extract_epi64(r, 1))));
}

// Four accumulators holding the last 256 bytes (x0 first) -> raw CRC state after them.
MIGSAFE_FOLD_TARGET inline uint32_t fold_finish(const FoldConstants& t, __m512i x0, __m512i x1, __m512i x2,
                                                __m512i x3) {
  const __m512i K512 = fold_k4(t.k512);
  x1 = fold512(x0, K512, x1);
  x2 = fold512(x1, K512, x2);
  x3 = fold512(x2, K512, x3);
  __m128i r = _mm512_extracti32x4_epi32(x3, 3);
  r = fold128(_mm512_extracti32x4_epi32(x3, 0), t.k384, r);
  r = fold128(_mm512_extracti32x4_epi32(x3, 1), t.k256, r);
  r = fold128(_mm512_extracti32x4_epi32(x3, 2), t.k128, r);
  return crc_of_last16(r);
}

#define MIGSAFE_FOLD256_TARGET __attribute__((target("avx2,vpclmulqdq,pclmul,sse4.2")))

MIGSAFE_FOLD256_TARGET inline __m256i fold_k2(const uint64_t* k) {
  return _mm256_broadcastsi128_si256(_mm_set_epi64x((long long)(k[1]), (long long)(k[0])));
}

MIGSAFE_FOLD256_TARGET inline __m256i fold256(__m256i x, __m256i k, __m256i next) {
  return _mm256_xor_si256(_mm256_xor_si256(_mm256_clmulepi64_epi128(x, k, 0x00), _mm256_clmulepi64_epi128(x, k, 0x11)),
                          next);
}

// Four 32-byte accumulators holding the last 128 bytes (x0 first) -> raw CRC state after them.
MIGSAFE_FOLD256_TARGET inline uint32_t fold_finish256(const FoldConstants& t, __m256i x0, __m256i x1, __m256i x2,
                                                      __m256i x3) {
  const __m256i K256 = fold_k2(t.k256);
  x1 = fold256(x0, K256, x1);
  x2 = fold256(x1, K256, x2);
  x3 = fold256(x2, K256, x3);
  return crc_of_last16(fold128(_mm256_castsi256_si128(x3), t.k128, _mm256_extracti128_si256(x3, 1)));
}

}  // namespace migsafe
#endif
