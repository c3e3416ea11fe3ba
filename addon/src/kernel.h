// The page-delta kernel: XBZRLE encode/decode of 4096-byte pages, byte-compatible with
// QEMU's migration/xbzrle.c. Pure mechanism, no N-API here (the fuzzer links it alone).
#pragma once
#include <cstddef>
#include <cstdint>

namespace migsafe {

constexpr size_t kPage = 4096;
// Encoders write runs with overlapping 32-byte stores and decide overflow only at the end of
// the page (the output is then at most 8192 bytes); callers give this much room.
constexpr size_t kDeltaCap = 2 * kPage + 64;

enum class Level : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

// Result of the compare pass: one bit per byte (1 = byte changed).
struct PageDiff {
  uint64_t neq[kPage / 64];
  uint64_t active;   // bit w: word w holds a run boundary (0: pages equal)
  uint32_t changed;  // changed bytes
  uint32_t bounds;   // run boundaries (2 per changed run, 1 for a run that reaches the end)
  bool new_zero;     // the new page is all zero bytes
};

// A lower bound of the XBZRLE length, from the counts alone: every changed run costs its bytes
// plus at least one length byte for itself and one for the unchanged run before it.
inline uint32_t delta_size_floor(const PageDiff& pd) { return pd.changed + 2 * ((pd.bounds + 1) / 2); }

// CPU levels this machine (and OS) can run; best first. Detected once.
int available_levels(Level* out);  // returns count (1..3)
Level best_level();
const char* level_name(Level l);
bool parse_level(const char* s, Level* out);
bool level_supported(Level l);
bool cpu_has_vbmi2();  // AVX-512 VBMI2: faster run flattening inside the avx512bw level
bool cpu_has_vpopcntdq();  // AVX-512 VPOPCNTDQ: counting changed bytes and runs

// Compare pass at a given level (all levels fill PageDiff identically).
void diff_page(Level l, const uint8_t* old_page, const uint8_t* new_page, PageDiff* pd);

// Turns a PageDiff into XBZRLE bytes. Returns the length (0 = unchanged) or -1 when QEMU's
// encoder (dlen = 4096) would report overflow. dst needs kDeltaCap bytes.
int encode_from_diff(const PageDiff& pd, const uint8_t* new_page, uint8_t* dst);

// encode_from_diff with early rejection of too-dirty pages and a check-free fast path.
int encode_diff(Level l, const PageDiff& pd, const uint8_t* new_page, uint8_t* dst);

// The compare pass of one page pair in steps, so that it can be spread over other work.
// encode_diff_overlapped advances the next page's pass between its groups of runs: the next
// page's loads then overlap this page's run walking. (With the pages beyond L2, as in any
// real checkpoint, the memory stream otherwise stops for the whole walk: it is longer than
// the out-of-order window.) Steps only at the avx512bw level; at the avx2 level diff_end does
// the whole pass (measured faster there, see pass_avx2), the scalar level does it in
// diff_begin. snap may be null (no snapshot); the CRC needs snap and VPCLMULQDQ (at the
// avx512bw level, or at avx2 on 256-bit registers); diff_end says whether it computed one.
// blend, if not null, receives the changed bytes (old_page + changes = the new contents),
// written from the compared registers; blend may be old_page itself (a shadow brought up to
// date).
struct alignas(64) DiffCursor {
  uint8_t state[5 * 64];  // OR of the new blocks, four CRC lanes
  const uint8_t* o;
  const uint8_t* n;
  uint8_t* snap;
  uint8_t* blend;
  PageDiff* pd;
  const void* fold;  // CRC fold constants when the CRC is computed
  int w;             // next block (64: all compared)
  Level level;
  bool finished;      // diff_end has run (or diff_begin did the whole pass)
  uint8_t last_active_words = 0;  // of the last page this cursor compared (a speed hint)
};
void diff_begin(DiffCursor* c, Level l, const uint8_t* old_page, const uint8_t* new_page, uint8_t* snap,
                PageDiff* pd, bool want_crc, uint8_t* blend = nullptr);
void diff_step(DiffCursor* c);
// Completes the pass (PageDiff filled as diff_page fills it); returns whether *crc was set to
// crc32c(snap).
bool diff_end(DiffCursor* c, uint32_t* crc);
// encode_diff that steps next (may be null) between its groups of runs.
int encode_diff_overlapped(Level l, const PageDiff& pd, const uint8_t* new_page, uint8_t* dst, DiffCursor* next);

// diff_page + encode_diff.
int encode_page(Level l, const uint8_t* old_page, const uint8_t* new_page, uint8_t* dst);

// Word-at-a-time encoder structured like QEMU's C encoder (the benchmark's baseline and an
// independent cross-check of the bitmap encoders). dst needs kPage bytes.
int encode_page_wordwise(const uint8_t* old_page, const uint8_t* new_page, uint8_t* dst);

// Applies delta (slen bytes) to page in place. Accepts exactly the inputs QEMU's decoder
// accepts (plus slen <= 4096, as QEMU's loader requires). Returns 0, or -1 with *err set.
// On error page may be partly written: callers decode into a scratch copy.
int decode_page(const uint8_t* delta, size_t slen, uint8_t* page, const char** err);

// dst[i] = src[i] wherever the PageDiff marks byte i changed (portable; at the avx512bw level
// the compare pass blends itself, see DiffCursor).
void blend_changed(const PageDiff& pd, const uint8_t* src, uint8_t* dst);

// Floor: reads both pages completely with the best compare; returns nonzero if they differ.
int floor_compare(Level l, const uint8_t* a, const uint8_t* b);

// True if the pages are identical (early exit).
bool pages_equal(Level l, const uint8_t* a, const uint8_t* b);

// A page from its byte planes (plane b = byte b of every 32-bit word): batch record kind 3.
void unshuffle4(const uint8_t* src, uint8_t* dst);

// Packed words (batch record kind 4, format in words.cc): the 32-bit words the PageDiff marks
// changed, frame-of-reference bit-packed in groups of 64. words_encode returns the payload
// length (-1 if no word changed); dst needs kWordsCap bytes. words_decode applies a payload
// to page in place (0, or -1 with *err set; page may then be partly written).
constexpr size_t kWordsCap = kPage / 32 + 16 * (5 + 256);
int words_encode(Level l, const PageDiff& pd, const uint8_t* page, uint8_t* dst);
int words_decode(const uint8_t* src, size_t len, uint8_t* page, const char** err);

// CRC32C (Castagnoli), zlib-style seed chaining: crc32c(B, crc32c(A)) == crc32c(A||B).
uint32_t crc32c(const uint8_t* data, size_t len, uint32_t seed = 0);
bool crc32c_hw();

}  // namespace migsafe
