// What the XBZRLE files share (xbzrle_diff.cc: the compare pass and its cursor;
// xbzrle_encode.cc: the encoder levels; xbzrle_ref.cc: the reference encoders and the decoder).
// The format, QEMU's migration/xbzrle.c (implemented independently):
//   page  = zrun nzrun | zrun nzrun page      (trailing unchanged run omitted)
//   zrun  = uleb128 length of an unchanged run (only the first may be 0)
//   nzrun = uleb128 length (> 0) followed by that many NEW bytes
// Lengths fit 14 bits (two ULEB128 bytes) since a page is 4096 bytes.
#pragma once
#include <cstdint>
#include <cstring>

namespace migsafe {

constexpr uint64_t kLo7 = 0x7f7f7f7f7f7f7f7fULL;
constexpr uint64_t kHi = 0x8080808080808080ULL;
// Gathers bit 8k of a word into bit 56+k (no two partial products collide, so no carries).
constexpr uint64_t kGather = 0x0102040810204080ULL;

inline uint64_t load64(const uint8_t* p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

}  // namespace migsafe
