#include "batch.h"

#include <lz4.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <sys/mman.h>
#include <new>
#include <stdexcept>
#include <thread>
#include <vector>

namespace migsafe {

// Large outputs live in their own mappings, in 2 MiB huge pages where the kernel allows: a
// dense batch writes megabytes of fresh memory, and with 4 KiB pages a page fault (and a
// zeroed page) per 4 KiB was a large share of its time (in a VM a fault costs microseconds).
// Smaller outputs stay with malloc. Which of the two a block is follows from its capacity.
namespace {
constexpr size_t kHuge = size_t(2) << 20;

// cap bytes (a multiple of kHuge) at a kHuge-aligned address, so that all of it can be huge.
uint8_t* map_block(size_t cap) {
  void* m = mmap(nullptr, cap + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) throw std::bad_alloc();
  uintptr_t a = reinterpret_cast<uintptr_t>(m), al = (a + kHuge - 1) & ~(kHuge - 1);
  if (al > a) munmap(m, al - a);
  munmap(reinterpret_cast<void*>(al + cap), kHuge - (al - a));
  uint8_t* p = reinterpret_cast<uint8_t*>(al);
#ifdef MADV_HUGEPAGE
  madvise(p, cap, MADV_HUGEPAGE);  // advice only: 4 KiB pages where the kernel says no
#endif
  return p;
}
}  // namespace

void Bytes::free_released(uint8_t* p, size_t cap) {
  if (cap >= kHuge) munmap(p, cap);
  else free(p);
}

void Bytes::reset() {
  if (!borrowed) free_released(data, cap);
  data = nullptr;
  size = cap = 0;
  borrowed = false;
}

Bytes::~Bytes() { reset(); }

namespace {
std::mutex kept_mu;
std::vector<Bytes> kept;
constexpr size_t kKeepBlocks = 4, kKeepMaxBytes = size_t(64) << 20;
}  // namespace

Bytes take_kept_bytes() {
  std::lock_guard<std::mutex> g(kept_mu);
  if (kept.empty()) return Bytes();
  Bytes b = std::move(kept.back());
  kept.pop_back();
  b.size = 0;
  return b;
}

void keep_bytes(Bytes&& b) {
  if (b.borrowed || b.cap == 0 || b.cap > kKeepMaxBytes) return;  // b frees it: one huge batch is not held on to
  std::lock_guard<std::mutex> g(kept_mu);
  if (kept.size() < kKeepBlocks) kept.push_back(std::move(b));
}

void Bytes::reserve(size_t n) {
  if (n <= cap) return;
  if (borrowed) throw std::length_error("borrowed output too small");  // callers size it with batch_bound
  if (n >= kHuge / 2) {
    size_t c = (n + kHuge - 1) / kHuge * kHuge;
    if (c < 2 * cap) c = (2 * cap + kHuge - 1) / kHuge * kHuge;
    uint8_t* p;
    if (cap >= kHuge) {
      void* q = mremap(data, cap, c, MREMAP_MAYMOVE);
      if (q == MAP_FAILED) throw std::bad_alloc();
      p = static_cast<uint8_t*>(q);
    } else {
      p = map_block(c);
      if (size) memcpy(p, data, size);
      free(data);
    }
    data = p;
    cap = c;
    return;
  }
  size_t c = cap ? cap : 4096;
  while (c < n) c *= 2;
  void* p = realloc(data, c);
  if (!p) throw std::bad_alloc();
  data = static_cast<uint8_t*>(p);
  cap = c;
}

namespace {

inline void put32(uint8_t* p, uint32_t v) { memcpy(p, &v, 4); }
inline uint32_t get32(const uint8_t* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

uint32_t zero_page_crc() {
  static const uint32_t c = [] {
    static const uint8_t z[kPage] = {};
    return crc32c(z, kPage);
  }();
  return c;
}

void encode_range(const uint8_t* ram, uint8_t* shadow, const uint32_t* pages, size_t begin,
                  size_t end, const BatchOptions& opt, Bytes& out, BatchStats& st) {
  alignas(64) uint8_t snaps[2][kPage];
  alignas(64) uint8_t lz[kWordsCap];
  PageDiff pds[2];
  DiffCursor cur[2];
  const uint32_t zcrc = zero_page_crc();
  auto page_at = [&](size_t k) { return pages ? size_t(pages[k]) : k; };
  // The shadow is brought up to date by the compare pass itself (changed bytes stored from
  // the registers it compared): after any record the page equals snap, and so does old
  // shadow + changed bytes.
  auto blend_to = [&](size_t p) { return opt.update_shadow ? shadow + p * kPage : nullptr; };
  // The compare pass of page k runs mostly while page k-1's runs are emitted (DiffCursor, at the
  // avx512bw level; at avx2 it runs whole in diff_end, see pass_avx2).
  if (begin < end) {
    size_t p = page_at(begin);
    diff_begin(&cur[0], opt.level, shadow + p * kPage, ram + p * kPage, snaps[0], &pds[0], true, blend_to(p));
  }
  out.reserve((end - begin) * 256 + kRecordHeader + kDeltaCap);
  for (size_t k = begin; k < end; k++) {
    size_t p = page_at(k);
    size_t slot = (k - begin) & 1;
    PageDiff& pd = pds[slot];
    uint8_t* snap = snaps[slot];
    // The guest may write the page while we work (stage 1 runs live): everything below reads
    // one private copy (snap), so payload, shadow and CRC all describe the same contents.
    uint32_t snap_crc = 0;
    bool have_crc = diff_end(&cur[slot], &snap_crc);
    DiffCursor* next = nullptr;
    if (k + 1 < end) {
      size_t q = page_at(k + 1);
      next = &cur[slot ^ 1];
      diff_begin(next, opt.level, shadow + q * kPage, ram + q * kPage, snaps[slot ^ 1], &pds[slot ^ 1], true, blend_to(q));
    }
    out.reserve(out.size + kRecordHeader + kDeltaCap);
    uint8_t* h = out.data + out.size;
    uint8_t* payload = h + kRecordHeader;
    // Dense pages: packed words first when the counts already say the delta is large, and no
    // run walk at all when the words beat the shortest delta the counts allow; after the walk,
    // words for a delta that turned out large or overflowed. They are kept only if smaller
    // than the delta, or than the whole page.
    const bool changed = pd.active != 0 && !pd.new_zero;
    int words = 0;
    if (opt.dense && changed && delta_size_floor(pd) > uint32_t(kDenseMin)) words = words_encode(opt.level, pd, snap, lz);
    const bool walk = changed && !(words > 0 && uint32_t(words) <= delta_size_floor(pd));
    int n = walk ? encode_diff_overlapped(opt.level, pd, snap, payload, next) : changed ? -1 : 0;
    if (opt.dense && changed && words == 0 && (n < 0 || n > kDenseMin)) words = words_encode(opt.level, pd, snap, lz);
    if (words >= (n < 0 ? int(kPage) : n)) words = 0;
    // After any record the page equals snap, and so does the shadow (see blend_to).
    auto page_crc = [&] { return have_crc ? snap_crc : crc32c(snap, kPage); };
    if (pd.active == 0) {
      st.unchanged++;
      continue;
    }
    uint8_t kind;
    uint32_t len, crc;
    if (pd.new_zero) {
      kind = kZero;
      len = 0;
      crc = zcrc;
      st.zero++;
    } else if (words > 0) {
      kind = kWords;
      len = uint32_t(words);
      memcpy(payload, lz, len);
      crc = page_crc();
      st.words++;
    } else if (n > 0) {
      kind = kDelta;
      len = uint32_t(n);
      crc = page_crc();
      st.delta++;
    } else {
      kind = kFull;
      len = kPage;
      memcpy(payload, snap, kPage);
      crc = page_crc();
      st.full++;
    }
    put32(h, uint32_t(p));
    h[4] = kind;
    h[5] = 0;
    h[6] = h[7] = 0;
    put32(h + 8, len);
    put32(h + 12, crc);
    out.size += kRecordHeader + len;
  }
}

}  // namespace

bool encode_batch(const uint8_t* ram, uint8_t* shadow, size_t npages, const uint32_t* pages,
                  size_t count, const BatchOptions& opt, Bytes& out, std::string& err,
                  BatchStats* stats) {
  std::vector<uint32_t> unique;
  if (pages) {
    // Candidates are a set: a repeated index is dropped (a page twice in one batch could not
    // be applied, and two threads would race on its shadow page).
    std::vector<uint64_t> seen((npages + 63) / 64, 0);
    bool repeated = false;
    for (size_t k = 0; k < count; k++) {
      uint32_t p = pages[k];
      if (p >= npages) {
        err = "page index " + std::to_string(p) + " out of range (" + std::to_string(npages) + " pages)";
        return false;
      }
      if (seen[p >> 6] >> (p & 63) & 1) repeated = true;
      seen[p >> 6] |= 1ULL << (p & 63);
    }
    if (repeated) {
      for (size_t k = 0; k < count; k++) {
        uint32_t p = pages[k];
        if (seen[p >> 6] >> (p & 63) & 1) {
          unique.push_back(p);
          seen[p >> 6] &= ~(1ULL << (p & 63));
        }
      }
      pages = unique.data();
      count = unique.size();
    }
  } else {
    count = npages;
  }
  size_t t = size_t(opt.threads < 1 ? 1 : opt.threads);
  if (t > count / 64) t = count / 64 ? count / 64 : 1;  // threads only pay off on real batches
  BatchStats total;
  if (t == 1) {
    encode_range(ram, shadow, pages, 0, count, opt, out, total);
  } else {
    // The pages are cut into chunks that the threads claim as they go: the calling thread from
    // the front, straight into out; the others from the back, into parts appended after the
    // join in page-list order (the same bytes as one thread). A fixed half each made the batch
    // wait for the slowest thread, and here a thread often starts late: a vCPU woken from idle
    // took 0.1 ms at the median and several ms at the 99th percentile.
    const size_t nchunks = std::min(count / 64, size_t(16) * t);
    auto chunk_begin = [&](size_t c) { return count * c / nchunks; };
    std::atomic<size_t> claimed{0}, back{nchunks};
    struct Piece {
      size_t chunk, part, off, len;
    };
    std::vector<Bytes> parts(t);
    for (size_t i = 1; i < t; i++) parts[i] = take_kept_bytes();
    std::vector<std::vector<Piece>> pieces(t);
    std::vector<BatchStats> st(t);
    // The appended pieces are copied by all t threads, each a slice of their concatenation
    // (a single thread copying megabytes of dense records was the serial tail of the batch).
    // The workers stay for it rather than new threads: a thread started here often waits for
    // its vCPU (above).
    std::vector<Piece> tail;
    size_t base = 0, rest = 0;
    bool split_copy = false;
    auto copy_slice = [&](size_t a, size_t b) {
      size_t pos = 0;
      for (auto& pc : tail) {
        if (a >= b) break;
        size_t lo = a > pos ? a - pos : 0, hi = b - pos < pc.len ? b - pos : pc.len;
        if (a < pos + pc.len && lo < hi) {
          memcpy(out.data + base + pos + lo, parts[pc.part].data + pc.off + lo, hi - lo);
          a = pos + hi;
        }
        pos += pc.len;
      }
    };
    std::atomic<size_t> encoded{0};
    std::atomic<bool> laid_out{false};
    std::vector<std::exception_ptr> failed(t);
    auto wait_until = [](auto ready) {
      while (!ready()) std::this_thread::yield();
    };
    std::vector<std::thread> th;
    for (size_t i = 1; i < t; i++)
      th.emplace_back([&, i] {
        try {
          while (claimed.fetch_add(1) < nchunks) {
            size_t c = back.fetch_sub(1) - 1, off = parts[i].size;
            encode_range(ram, shadow, pages, chunk_begin(c), chunk_begin(c + 1), opt, parts[i], st[i]);
            pieces[i].push_back({c, i, off, parts[i].size - off});
          }
        } catch (...) {
          failed[i] = std::current_exception();
          claimed.store(size_t(1) << 60);  // the others stop claiming
        }
        encoded.fetch_add(1, std::memory_order_release);
        wait_until([&] { return laid_out.load(std::memory_order_acquire); });
        if (split_copy) copy_slice(rest * i / t, rest * (i + 1) / t);
      });
    // Claims never exceed nchunks, so the front and back never cross. On an error (memory) the
    // workers are stopped and joined before it is thrown on.
    try {
      for (size_t c = 0; claimed.fetch_add(1) < nchunks; c++)
        encode_range(ram, shadow, pages, chunk_begin(c), chunk_begin(c + 1), opt, out, st[0]);
    } catch (...) {
      failed[0] = std::current_exception();
      claimed.store(size_t(1) << 60);
    }
    wait_until([&] { return encoded.load(std::memory_order_acquire) == t - 1; });
    for (size_t i = 1; i < t; i++) tail.insert(tail.end(), pieces[i].begin(), pieces[i].end());
    std::sort(tail.begin(), tail.end(), [](const Piece& x, const Piece& y) { return x.chunk < y.chunk; });
    base = out.size;
    for (auto& pc : tail) rest += pc.len;
    if (!failed[0]) {
      try {
        out.reserve(base + rest ? base + rest : 1);
      } catch (...) {
        failed[0] = std::current_exception();
      }
    }
    for (auto& f : failed)
      if (f) {
        laid_out.store(true, std::memory_order_release);  // split_copy is false: nothing is copied
        for (auto& x : th) x.join();
        std::rethrow_exception(f);
      }
    split_copy = rest >= (size_t(1) << 20);
    laid_out.store(true, std::memory_order_release);
    copy_slice(0, split_copy ? rest / t : rest);
    for (auto& x : th) x.join();
    out.size = base + rest;
    for (size_t i = 1; i < t; i++) keep_bytes(std::move(parts[i]));
    for (size_t i = 0; i < t; i++) {
      total.zero += st[i].zero;
      total.delta += st[i].delta;
      total.full += st[i].full;
      total.words += st[i].words;
      total.unchanged += st[i].unchanged;
    }
  }
  if (stats) *stats = total;
  return true;
}

bool apply_batch(uint8_t* image, size_t npages, const uint8_t* rec, size_t len, size_t* applied,
                 std::string& err) {
  struct Rec {
    uint32_t page, len, crc;
    uint8_t kind;
    size_t off;
  };
  std::vector<Rec> recs;
  std::vector<uint64_t> seen((npages + 63) / 64, 0);
  size_t pos = 0;
  auto fail = [&](size_t idx, const std::string& why) {
    err = "record " + std::to_string(idx) + " (byte " + std::to_string(pos) + "): " + why;
    return false;
  };
  // Pass 1: structure.
  while (pos < len) {
    size_t idx = recs.size();
    if (len - pos < kRecordHeader) return fail(idx, "truncated record header");
    const uint8_t* h = rec + pos;
    Rec r{get32(h), get32(h + 8), get32(h + 12), h[4], pos + kRecordHeader};
    if (h[5] || h[6] || h[7]) return fail(idx, "reserved header bytes are not zero");
    if (r.kind > kWords) return fail(idx, "unknown record kind " + std::to_string(r.kind));
    if (r.page >= npages)
      return fail(idx, "page " + std::to_string(r.page) + " outside the image (" + std::to_string(npages) + " pages)");
    if ((r.kind == kZero && r.len != 0) || (r.kind == kFull && r.len != kPage) ||
        (r.kind == kDelta && (r.len == 0 || r.len > kPage)) ||
        ((r.kind == kPlanesLz4 || r.kind == kWords) && (r.len == 0 || r.len >= kPage)))
      return fail(idx, "length " + std::to_string(r.len) + " invalid for its kind");
    if (len - r.off < r.len) return fail(idx, "payload truncated");
    if (seen[r.page >> 6] >> (r.page & 63) & 1)
      return fail(idx, "page " + std::to_string(r.page) + " appears twice");
    seen[r.page >> 6] |= 1ULL << (r.page & 63);
    recs.push_back(r);
    pos = r.off + r.len;
  }
  // Pass 2: decode and checksum into staging; the image is only read.
  std::unique_ptr<uint8_t[]> staging(new uint8_t[recs.size() * kPage]);
  for (size_t i = 0; i < recs.size(); i++) {
    const Rec& r = recs[i];
    uint8_t* s = staging.get() + i * kPage;
    pos = r.off - kRecordHeader;
    if (r.kind == kZero) {
      memset(s, 0, kPage);
    } else if (r.kind == kFull) {
      memcpy(s, rec + r.off, kPage);
    } else if (r.kind == kPlanesLz4) {
      alignas(64) uint8_t planes[kPage];
      if (LZ4_decompress_safe((const char*)rec + r.off, (char*)planes, int(r.len), int(kPage)) != int(kPage))
        return fail(i, "corrupt LZ4 payload");
      unshuffle4(planes, s);
    } else {
      // A delta or packed words: against the page as the image holds it.
      memcpy(s, image + size_t(r.page) * kPage, kPage);
      const char* e = nullptr;
      const bool words = r.kind == kWords;
      int rc = words ? words_decode(rec + r.off, r.len, s, &e) : decode_page(rec + r.off, r.len, s, &e);
      if (rc != 0) return fail(i, std::string(words ? "bad packed words: " : "bad delta: ") + e);
    }
    if (crc32c(s, kPage) != r.crc) return fail(i, "checksum mismatch on page " + std::to_string(r.page));
  }
  // Pass 3: commit.
  for (size_t i = 0; i < recs.size(); i++)
    memcpy(image + size_t(recs[i].page) * kPage, staging.get() + i * kPage, kPage);
  *applied = recs.size();
  return true;
}

}  // namespace migsafe
