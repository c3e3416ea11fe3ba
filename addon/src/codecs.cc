// Codecs. Levels: gzip/deflate 0..9 (zlib), lz4 <= 1 = fast (LZ4_compress_default),
// 2..12 = LZ4 HC, zstd 1..22 (and negative fast levels). Contexts are per thread and reused:
// checkpoint rounds compress many small batches.
#include "codecs.h"

#include <cstring>
#include <lz4.h>
#include <lz4hc.h>
#include <zlib.h>
#include <zstd.h>

namespace migsafe {

bool parse_codec(const char* s, Codec* out) {
  if (!strcmp(s, "none")) *out = Codec::None;
  else if (!strcmp(s, "gzip")) *out = Codec::Gzip;
  else if (!strcmp(s, "deflate")) *out = Codec::Deflate;
  else if (!strcmp(s, "lz4")) *out = Codec::Lz4;
  else if (!strcmp(s, "zstd")) *out = Codec::Zstd;
  else return false;
  return true;
}

namespace {

struct ZstdCtx {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ZSTD_DCtx* d = ZSTD_createDCtx();
  ~ZstdCtx() {
    ZSTD_freeCCtx(c);
    ZSTD_freeDCtx(d);
  }
};
ZstdCtx& zstd_ctx() {
  thread_local ZstdCtx z;
  return z;
}

int zlib_bits(Codec c) { return c == Codec::Gzip ? 15 + 16 : -15; }

// zlib streams are expensive to set up (hundreds of KB of state): one deflate and one inflate
// stream per thread, reset between calls and re-created only when the framing or level changes.
struct ZlibCtx {
  z_stream d{}, i{};
  int d_bits = 0, d_level = -1, d_mem = 0, i_bits = 0;
  ~ZlibCtx() {
    if (d_level >= 0) deflateEnd(&d);
    if (i_bits) inflateEnd(&i);
  }
  // deflateReset clears a hash table of 2^(memLevel+8) bytes: for page-sized inputs a smaller
  // window and table make the set-up cheap (any inflater with a 32 KiB window reads them).
  z_stream* deflater(int bits, int level, int mem) {
    if (d_level >= 0 && (bits != d_bits || level != d_level || mem != d_mem)) {
      deflateEnd(&d);
      d_level = -1;
    }
    if (d_level < 0) {
      memset(&d, 0, sizeof d);
      if (deflateInit2(&d, level, Z_DEFLATED, bits, mem, Z_DEFAULT_STRATEGY) != Z_OK) return nullptr;
      d_bits = bits;
      d_level = level;
      d_mem = mem;
    } else if (deflateReset(&d) != Z_OK) {
      return nullptr;
    }
    return &d;
  }
  z_stream* inflater(int bits) {
    if (i_bits && bits != i_bits) {
      inflateEnd(&i);
      i_bits = 0;
    }
    if (!i_bits) {
      memset(&i, 0, sizeof i);
      if (inflateInit2(&i, bits) != Z_OK) return nullptr;
      i_bits = bits;
    } else if (inflateReset(&i) != Z_OK) {
      return nullptr;
    }
    return &i;
  }
};
ZlibCtx& zlib_ctx() {
  thread_local ZlibCtx z;
  return z;
}

}  // namespace

bool compress(Codec c, int level, const uint8_t* src, size_t n, ByteVec& out,
              std::string& err) {
  switch (c) {
    case Codec::None:
      out.assign(src, src + n);
      return true;
    case Codec::Lz4: {
      if (n > size_t(LZ4_MAX_INPUT_SIZE)) { err = "lz4: input too large"; return false; }
      out.resize(size_t(LZ4_compressBound(int(n))));
      int r = level <= 1
                  ? LZ4_compress_default((const char*)src, (char*)out.data(), int(n), int(out.size()))
                  : LZ4_compress_HC((const char*)src, (char*)out.data(), int(n), int(out.size()),
                                    level);
      if (r <= 0 && n > 0) { err = "lz4: compression failed"; return false; }
      out.resize(size_t(r));
      return true;
    }
    case Codec::Zstd: {
      out.resize(ZSTD_compressBound(n));
      size_t r = ZSTD_compressCCtx(zstd_ctx().c, out.data(), out.size(), src, n, level);
      if (ZSTD_isError(r)) { err = std::string("zstd: ") + ZSTD_getErrorName(r); return false; }
      out.resize(r);
      return true;
    }
    case Codec::Gzip:
    case Codec::Deflate: {
      if (level < 0 || level > 9) { err = "gzip/deflate level must be 0..9"; return false; }
      int w = 9;
      while (w < 15 && (size_t(1) << w) < n) w++;
      int bits = c == Codec::Gzip ? w + 16 : -w;
      z_stream* zs = zlib_ctx().deflater(bits, level, w - 6 < 1 ? 1 : w - 6 > 8 ? 8 : w - 6);
      if (!zs) { err = "zlib: deflateInit2 failed"; return false; }
      z_stream& s = *zs;
      out.resize(deflateBound(&s, uLong(n)) + 32);
      s.next_in = const_cast<Bytef*>(src);
      s.avail_in = uInt(n);
      s.next_out = out.data();
      s.avail_out = uInt(out.size());
      int r = deflate(&s, Z_FINISH);
      size_t produced = s.total_out;
      if (r != Z_STREAM_END) { err = "zlib: deflate did not finish"; return false; }
      out.resize(produced);
      return true;
    }
  }
  err = "unknown codec";
  return false;
}

bool decompress(Codec c, const uint8_t* src, size_t n, uint8_t* dst, size_t raw_len,
                std::string& err) {
  switch (c) {
    case Codec::None:
      if (n != raw_len) { err = "none: length mismatch"; return false; }
      memcpy(dst, src, n);
      return true;
    case Codec::Lz4: {
      if (n > size_t(INT32_MAX) || raw_len > size_t(INT32_MAX)) { err = "lz4: too large"; return false; }
      int r = LZ4_decompress_safe((const char*)src, (char*)dst, int(n), int(raw_len));
      if (r < 0) { err = "lz4: corrupt input"; return false; }
      if (size_t(r) != raw_len) { err = "lz4: decompressed length differs from rawLength"; return false; }
      return true;
    }
    case Codec::Zstd: {
      unsigned long long fcs = ZSTD_getFrameContentSize(src, n);
      if (fcs == ZSTD_CONTENTSIZE_ERROR) { err = "zstd: not a zstd frame"; return false; }
      if (fcs != ZSTD_CONTENTSIZE_UNKNOWN && fcs != raw_len) {
        err = "zstd: frame content size differs from rawLength";
        return false;
      }
      size_t r = ZSTD_decompressDCtx(zstd_ctx().d, dst, raw_len, src, n);
      if (ZSTD_isError(r)) { err = std::string("zstd: ") + ZSTD_getErrorName(r); return false; }
      if (r != raw_len) { err = "zstd: decompressed length differs from rawLength"; return false; }
      return true;
    }
    case Codec::Gzip:
    case Codec::Deflate: {
      z_stream* zs = zlib_ctx().inflater(zlib_bits(c));
      if (!zs) { err = "zlib: inflateInit2 failed"; return false; }
      z_stream& s = *zs;
      // One spare byte of room: zlib wants some output space even to finish an empty stream,
      // and it turns "longer than rawLength" into a detectable extra byte.
      ByteVec tmp;
      uint8_t* out = dst;
      if (raw_len == 0) {
        tmp.resize(1);
        out = tmp.data();
      }
      s.next_in = const_cast<Bytef*>(src);
      s.avail_in = uInt(n);
      s.next_out = out;
      s.avail_out = uInt(raw_len ? raw_len : 1);
      int r = inflate(&s, Z_FINISH);
      size_t produced = s.total_out, left = s.avail_in;
      if (r != Z_STREAM_END) {
        err = r == Z_BUF_ERROR && produced == raw_len ? "zlib: output longer than rawLength"
                                                      : "zlib: corrupt or truncated input";
        return false;
      }
      if (produced != raw_len) { err = "zlib: decompressed length differs from rawLength"; return false; }
      if (left) { err = "zlib: trailing bytes after the stream"; return false; }
      return true;
    }
  }
  err = "unknown codec";
  return false;
}

}  // namespace migsafe

namespace migsafe {

namespace {
constexpr uint32_t kPackMagic = 0x4b50534d;  // "MSPK"
constexpr size_t kPackHeader = 20;
inline uint32_t rd32(const uint8_t* p) { uint32_t v; memcpy(&v, p, 4); return v; }
inline void wr32(uint8_t* p, uint32_t v) { memcpy(p, &v, 4); }
}  // namespace

bool pack_records(const uint8_t* rec, size_t len, Codec c, int level, size_t small_max,
                  const std::function<uint8_t*(size_t)>& alloc, std::string& err) {
  // Per-thread scratch stays warm across calls (fresh buffers cost a page fault per 4 KiB).
  thread_local ByteVec small, probe, packed;
  thread_local std::vector<std::pair<size_t, size_t>> stored;  // runs of stored records: offset, bytes
  small.clear();
  stored.clear();
  size_t stored_bytes = 0;
  for (size_t off = 0; off < len;) {
    if (len - off < 16) { err = "packBatch: truncated record header"; return false; }
    size_t plen = rd32(rec + off + 8), end = off + 16 + plen;
    if (end > len) { err = "packBatch: truncated payload"; return false; }
    bool compressible = plen <= small_max;
    if (!compressible && rec[off + 4] == 1 && c != Codec::None) {
      // Large delta: worth the codec only if LZ4 finds 1/8 to save (fails fast on noise).
      if (probe.size() < plen) probe.resize(plen);
      int limit = int(plen - plen / 8);
      compressible = LZ4_compress_default((const char*)rec + off + 16, (char*)probe.data(), int(plen), limit) > 0;
    }
    if (compressible) {
      small.insert(small.end(), rec + off, rec + end);
    } else {
      if (!stored.empty() && stored.back().first + stored.back().second == off) stored.back().second += end - off;
      else stored.push_back({off, end - off});
      stored_bytes += end - off;
    }
    off = end;
  }
  if (!compress(c, level, small.data(), small.size(), packed, err)) return false;
  uint8_t* out = alloc(kPackHeader + packed.size() + stored_bytes);
  wr32(out, kPackMagic);
  out[4] = 1;
  out[5] = uint8_t(c);
  out[6] = out[7] = 0;
  wr32(out + 8, uint32_t(small.size()));
  wr32(out + 12, uint32_t(packed.size()));
  wr32(out + 16, uint32_t(stored_bytes));
  uint8_t* p = out + kPackHeader;
  if (!packed.empty()) memcpy(p, packed.data(), packed.size());
  p += packed.size();
  for (auto& r : stored) {
    memcpy(p, rec + r.first, r.second);
    p += r.second;
  }
  return true;
}

bool unpack_records(const uint8_t* in, size_t len, ByteVec& out, std::string& err) {
  if (len < kPackHeader || rd32(in) != kPackMagic) { err = "unpackBatch: not a packed batch"; return false; }
  if (in[4] != 1) { err = "unpackBatch: unsupported version"; return false; }
  if (in[5] > uint8_t(Codec::Zstd) || in[6] || in[7]) { err = "unpackBatch: bad header"; return false; }
  size_t raw = rd32(in + 8), packed = rd32(in + 12), large = rd32(in + 16);
  if (kPackHeader + packed + large != len) { err = "unpackBatch: lengths do not match the buffer"; return false; }
  if (raw > (size_t(1) << 31)) { err = "unpackBatch: implausible size"; return false; }
  out.resize(raw + large);
  if (!decompress(Codec(in[5]), in + kPackHeader, packed, out.data(), raw, err)) return false;
  if (large) memcpy(out.data() + raw, in + kPackHeader + packed, large);
  return true;
}

}  // namespace migsafe
