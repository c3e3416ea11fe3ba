// Whole-buffer codecs over the system libraries (zlib, liblz4, libzstd).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace migsafe {

enum class Codec : int { None = 0, Gzip = 1, Deflate = 2, Lz4 = 3, Zstd = 4 };

bool parse_codec(const char* s, Codec* out);

// Compresses src into out (resized to the compressed size). Returns false with err set.
bool compress(Codec c, int level, const uint8_t* src, size_t n, std::vector<uint8_t>& out,
              std::string& err);
// Decompresses into dst, which must be exactly raw_len bytes; anything else is an error.
bool decompress(Codec c, const uint8_t* src, size_t n, uint8_t* dst, size_t raw_len,
                std::string& err);

}  // namespace migsafe
