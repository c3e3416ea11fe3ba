// Whole-buffer codecs over the system libraries (zlib, liblz4, libzstd).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <new>
#include <utility>
#include <vector>

namespace migsafe {

// std::vector whose resize leaves new bytes uninitialized: output buffers are sized to a
// bound and then written, zero-filling them first would cost as much as the copy.
template <class T>
struct NoInitAlloc : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = NoInitAlloc<U>;
  };
  NoInitAlloc() = default;
  template <class U>
  NoInitAlloc(const NoInitAlloc<U>&) noexcept {}
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... A>
  void construct(U* p, A&&... a) {
    ::new (static_cast<void*>(p)) U(std::forward<A>(a)...);
  }
};
using ByteVec = std::vector<uint8_t, NoInitAlloc<uint8_t>>;

enum class Codec : int { None = 0, Gzip = 1, Deflate = 2, Lz4 = 3, Zstd = 4 };

bool parse_codec(const char* s, Codec* out);

// Compresses src into out (resized to the compressed size). Returns false with err set.
bool compress(Codec c, int level, const uint8_t* src, size_t n, ByteVec& out,
              std::string& err);
// Decompresses into dst, which must be exactly raw_len bytes; anything else is an error.
bool decompress(Codec c, const uint8_t* src, size_t n, uint8_t* dst, size_t raw_len,
                std::string& err);

}  // namespace migsafe

namespace migsafe {

// Combined mode (see src/kernel/codecs.ts packBatch): splits a record buffer into records that
// compress (small payloads, and larger XBZRLE deltas an LZ4 probe finds compressible), packed
// as one frame, and the rest, stored. Returns false with err on malformed framing.
// The packed bytes go straight to alloc(size) (the caller's buffer: one copy of the stored
// records, no intermediate buffer).
bool pack_records(const uint8_t* rec, size_t len, Codec c, int level, size_t small_max,
                  const std::function<uint8_t*(size_t)>& alloc, std::string& err);
bool unpack_records(const uint8_t* in, size_t len, ByteVec& out, std::string& err);

}  // namespace migsafe
