// Batch records: the unit a checkpoint round ships.
//
// A batch is a packed sequence of records, no padding, little-endian:
//   u32 page      page index in the RAM image
//   u8  kind      0 = zero page (no payload), 1 = XBZRLE delta against the previous
//                 checkpointed contents, 2 = full page (4096 bytes), 3 = LZ4 block of the
//                 page's byte planes (read only: earlier builds wrote it for dense pages),
//                 4 = packed words against the previous checkpointed contents (words.cc),
//                 only written with BatchOptions.dense
//   u8  0, u16 0  reserved, must be zero
//   u32 length    payload bytes: 0 (zero), 1..4096 (delta), 4096 (full), 1..4095 (planes,
//                 words)
//   u32 crc32c    CRC32C of the page contents after the record is applied
//   payload
// A page appears at most once per batch.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "kernel.h"

namespace migsafe {

constexpr size_t kRecordHeader = 16;
enum RecordKind : uint8_t { kZero = 0, kDelta = 1, kFull = 2, kPlanesLz4 = 3, kWords = 4 };

// With BatchOptions.dense, pages whose delta exceeds this (or that would go whole) also try
// kind 4 and keep the smaller payload.
constexpr int kDenseMin = 1024;

// The most bytes a batch of count pages can need while it is encoded: every page whole, plus
// the encoders' scratch room past the last record (see kDeltaCap).
constexpr size_t batch_bound(size_t count) { return count * (kRecordHeader + kPage) + kRecordHeader + kDeltaCap; }

// malloc-backed growable bytes (no zero-fill on growth); ownership can be handed to a Buffer.
// A borrowed Bytes writes into the caller's memory and never grows (reserve past it throws).
struct Bytes {
  uint8_t* data = nullptr;
  size_t size = 0, cap = 0;
  bool borrowed = false;
  Bytes() = default;
  static Bytes borrow(uint8_t* p, size_t cap) {
    Bytes b;
    b.data = p, b.cap = cap, b.borrowed = true;
    return b;
  }
  Bytes(const Bytes&) = delete;
  Bytes& operator=(const Bytes&) = delete;
  Bytes(Bytes&& o) noexcept : data(o.data), size(o.size), cap(o.cap), borrowed(o.borrowed) {
    o.data = nullptr, o.size = o.cap = 0, o.borrowed = false;
  }
  Bytes& operator=(Bytes&& o) noexcept {
    if (this != &o) {
      reset();
      data = o.data, size = o.size, cap = o.cap, borrowed = o.borrowed;
      o.data = nullptr, o.size = o.cap = 0, o.borrowed = false;
    }
    return *this;
  }
  ~Bytes();
  void reserve(size_t n);
  void reset();  // frees the memory (a borrowed one is only let go)
  // Hands the memory over; it is freed later with free_released(p, cap as it was).
  uint8_t* release() { uint8_t* p = data; data = nullptr; size = cap = 0; return p; }
  static void free_released(uint8_t* p, size_t cap);
};

// Output memory kept from batch to batch (a few blocks, none over 64 MiB): fresh pages fault
// once per 4 KiB, and faults from two threads at once wait on each other (one lock per
// address space). take_kept_bytes gives an empty Bytes, warm if one was kept; keep_bytes
// takes one back (or frees it).
Bytes take_kept_bytes();
void keep_bytes(Bytes&& b);

struct BatchOptions {
  Level level = Level::Scalar;
  int threads = 1;
  bool update_shadow = true;
  bool dense = false;  // per-page choice between XBZRLE and packed words
};

struct BatchStats {
  size_t zero = 0, delta = 0, full = 0, words = 0, unchanged = 0;
};

// ram and shadow hold npages pages each. pages == nullptr: every page; repeated indexes count
// once. Returns false with err on an out-of-range page index (nothing is encoded then).
bool encode_batch(const uint8_t* ram, uint8_t* shadow, size_t npages, const uint32_t* pages,
                  size_t count, const BatchOptions& opt, Bytes& out, std::string& err,
                  BatchStats* stats = nullptr);

// Decodes and checks every record into staging memory, then writes them all to image.
// On any error returns false, err says which record and why, image is untouched.
bool apply_batch(uint8_t* image, size_t npages, const uint8_t* rec, size_t len, size_t* applied,
                 std::string& err);

}  // namespace migsafe
