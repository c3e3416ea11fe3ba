// Fuzz target for the kernel's untrusted-input paths, under AddressSanitizer:
//   mode 0: decode_page on arbitrary bytes (the XBZRLE decoder)
//   mode 1: apply_batch on arbitrary bytes (record parser, deltas, packed words, LZ4 planes, CRC)
//   mode 2: encoders on arbitrary page pairs: every level must give the same bytes as the
//           wordwise encoder, and a delta must decode back to the new page
//   mode 3: encode_batch (every level, dense or not) on 4 pages edited by the input: the
//           shadow must equal the new RAM and apply_batch must rebuild it from the old one
// Built as a libFuzzer target (clang -fsanitize=fuzzer) or, with -DSTANDALONE, as a driver
// that feeds random and mutated inputs by itself. scripts/fuzz.sh builds and runs both.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../src/batch.h"
#include "../src/kernel.h"

using namespace migsafe;

static void check(bool ok, const char* what) {
  if (!ok) {
    fprintf(stderr, "fuzz: invariant broken: %s\n", what);
    abort();
  }
}

static void run_one(const uint8_t* data, size_t size) {
  if (size == 0) return;
  uint8_t mode = data[0] % 4;
  data++;
  size--;
  // Exact-size heap copies, so any read or write past an end is an ASan report.
  std::unique_ptr<uint8_t[]> in(new uint8_t[size ? size : 1]);
  memcpy(in.get(), data, size);
  if (mode == 0) {
    std::unique_ptr<uint8_t[]> page(new uint8_t[kPage]);
    memset(page.get(), 0x5a, kPage);
    const char* err = nullptr;
    int r = decode_page(in.get(), size, page.get(), &err);
    check(r == 0 || (r == -1 && err), "decode result");
    if (size > kPage) check(r == -1, "oversized delta refused");
  } else if (mode == 1) {
    constexpr size_t kPages = 4;
    std::unique_ptr<uint8_t[]> image(new uint8_t[kPages * kPage]);
    memset(image.get(), 0x33, kPages * kPage);
    std::unique_ptr<uint8_t[]> before(new uint8_t[kPages * kPage]);
    memcpy(before.get(), image.get(), kPages * kPage);
    size_t applied = 0;
    std::string err;
    bool ok = apply_batch(image.get(), kPages, in.get(), size, &applied, err);
    if (!ok) check(memcmp(image.get(), before.get(), kPages * kPage) == 0, "refused batch left the image untouched");
  } else if (mode == 3) {
    constexpr size_t kPages = 4;
    std::unique_ptr<uint8_t[]> old(new uint8_t[kPages * kPage]), ram(new uint8_t[kPages * kPage]);
    for (size_t i = 0; i < kPages * kPage; i++) old[i] = uint8_t(i * 13 + (i >> 12));
    memcpy(ram.get(), old.get(), kPages * kPage);
    // Edits: (position hi, position lo + length, value); value 0 with a long length zeroes.
    for (size_t i = 0; i + 3 <= size; i += 3) {
      size_t at = (size_t(in[i]) << 6 | in[i + 1] >> 2) % (kPages * kPage);
      size_t len = 1 + (in[i + 1] & 3) * 300;
      for (size_t k = at; k < at + len && k < kPages * kPage; k++) ram[k] = in[i + 2] ? uint8_t(ram[k] + in[i + 2]) : 0;
    }
    Level levels[3];
    int nl = available_levels(levels);
    for (int li = 0; li < nl; li++) {
      for (int dense = 0; dense < 2; dense++) {
        std::unique_ptr<uint8_t[]> shadow(new uint8_t[kPages * kPage]), image(new uint8_t[kPages * kPage]);
        memcpy(shadow.get(), old.get(), kPages * kPage);
        memcpy(image.get(), old.get(), kPages * kPage);
        BatchOptions bo;
        bo.level = levels[li];
        bo.dense = dense;
        Bytes rec;
        std::string err;
        check(encode_batch(ram.get(), shadow.get(), kPages, nullptr, 0, bo, rec, err), "encode_batch");
        check(memcmp(shadow.get(), ram.get(), kPages * kPage) == 0, "shadow equals ram");
        size_t applied = 0;
        check(apply_batch(image.get(), kPages, rec.data, rec.size, &applied, err), "own batch applies");
        check(memcmp(image.get(), ram.get(), kPages * kPage) == 0, "applied image equals ram");
      }
    }
  } else {
    std::unique_ptr<uint8_t[]> o(new uint8_t[kPage]), n(new uint8_t[kPage]);
    // The input describes the new page as edits of a patterned old page, so both near-equal
    // and very different pairs occur.
    for (size_t i = 0; i < kPage; i++) o[i] = uint8_t(i * 7);
    memcpy(n.get(), o.get(), kPage);
    for (size_t i = 0; i + 3 <= size; i += 3) {
      size_t at = (size_t(in[i]) << 4 | in[i + 1] >> 4) % kPage;
      size_t len = 1 + (in[i + 1] & 15) * (in[i + 1] & 15);
      for (size_t k = at; k < at + len && k < kPage; k++) n[k] = uint8_t(n[k] + in[i + 2] + 1);
    }
    std::unique_ptr<uint8_t[]> ref(new uint8_t[kPage]);
    int rl = encode_page_wordwise(o.get(), n.get(), ref.get());
    Level levels[3];
    int nl = available_levels(levels);
    for (int li = 0; li < nl; li++) {
      std::unique_ptr<uint8_t[]> out(new uint8_t[kDeltaCap]);
      int l = encode_page(levels[li], o.get(), n.get(), out.get());
      check(l == rl, "levels agree on length / overflow");
      if (l > 0) check(memcmp(out.get(), ref.get(), size_t(l)) == 0, "levels agree on bytes");
    }
    if (rl >= 0) {
      std::unique_ptr<uint8_t[]> delta(new uint8_t[rl ? rl : 1]);
      memcpy(delta.get(), ref.get(), size_t(rl));
      std::unique_ptr<uint8_t[]> page(new uint8_t[kPage]);
      memcpy(page.get(), o.get(), kPage);
      const char* err = nullptr;
      check(decode_page(delta.get(), size_t(rl), page.get(), &err) == 0, "own delta decodes");
      check(memcmp(page.get(), n.get(), kPage) == 0, "round trip");
    }
  }
}

#ifndef STANDALONE
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  run_one(data, size);
  return 0;
}
#else
// Standalone driver: random inputs, and mutations (byte flips, truncation, insertions) of
// valid deltas and batches. Usage: fuzz_standalone [iterations] [seed]
static uint64_t s_rng = 88172645463325252ULL;
static uint64_t next() {
  s_rng ^= s_rng << 13;
  s_rng ^= s_rng >> 7;
  s_rng ^= s_rng << 17;
  return s_rng;
}

int main(int argc, char** argv) {
  long iters = argc > 1 ? atol(argv[1]) : 1000000;
  if (argc > 2) s_rng = strtoull(argv[2], nullptr, 10) | 1;
  // Seeds: valid deltas and a valid batch, to mutate.
  std::vector<std::vector<uint8_t>> seeds;
  {
    std::vector<uint8_t> o(kPage), n(kPage), out(kDeltaCap);
    for (int s = 0; s < 32; s++) {
      for (size_t i = 0; i < kPage; i++) o[i] = n[i] = uint8_t(next());
      int edits = 1 + int(next() % 200);
      for (int e = 0; e < edits; e++) {
        size_t at = next() % kPage, len = 1 + next() % 40;
        for (size_t k = at; k < at + len && k < kPage; k++) n[k] ^= uint8_t(1 + next() % 255);
      }
      int l = encode_page(best_level(), o.data(), n.data(), out.data());
      if (l > 0) {
        std::vector<uint8_t> d(1 + size_t(l));
        d[0] = 0;
        memcpy(d.data() + 1, out.data(), size_t(l));
        seeds.push_back(d);
      }
    }
    std::vector<uint8_t> ram(4 * kPage), shadow(4 * kPage);
    for (auto& b : shadow) b = uint8_t(next());
    ram = shadow;
    for (size_t i = 0; i < 40; i++) ram[next() % ram.size()] ^= 0xff;
    memset(ram.data() + 2 * kPage, 0, kPage);
    Bytes rec;
    std::string err;
    BatchOptions bo;
    bo.update_shadow = false;
    // A batch as a mode-1 input (apply_batch).
    auto batch_seed = [&](const Bytes& r) {
      std::vector<uint8_t> b(1 + r.size);
      b[0] = 1;
      memcpy(b.data() + 1, r.data, r.size);
      seeds.push_back(b);
    };
    encode_batch(ram.data(), shadow.data(), 4, nullptr, 0, bo, rec, err);
    batch_seed(rec);
    // A dense batch: pages of narrow integers, partly rewritten, go as packed words (kind 4).
    for (int s = 0; s < 8; s++) {
      uint32_t width = 1 + uint32_t(next() % 31), base = uint32_t(next());
      for (size_t w = 0; w < 4 * kPage / 4; w++) {
        uint32_t v = base + uint32_t(next() & ((1u << width) - 1));
        if (next() % 4) memcpy(ram.data() + 4 * w, &v, 4);
      }
      Bytes dense;
      bo.dense = true;
      encode_batch(ram.data(), shadow.data(), 4, nullptr, 0, bo, dense, err);
      batch_seed(dense);
    }
  }
  std::vector<uint8_t> buf;
  for (long it = 0; it < iters; it++) {
    uint64_t r = next();
    if (r % 4 == 0) {
      buf.resize(next() % 96);
      for (auto& c : buf) c = (next() & 1) ? uint8_t(next() % 8) : uint8_t(next());
    } else if (r % 4 == 3) {
      buf.resize(1 + next() % 300);
      for (auto& c : buf) c = uint8_t(next());
      buf[0] = uint8_t(2 + (next() & 1));  // encoders, or a whole batch round trip
    } else {
      buf = seeds[next() % seeds.size()];
      int muts = 1 + int(next() % 4);
      for (int m = 0; m < muts && buf.size() > 1; m++) {
        switch (next() % 4) {
          case 0: buf[1 + next() % (buf.size() - 1)] = uint8_t(next()); break;
          case 1: buf.resize(1 + next() % buf.size()); break;
          case 2: buf.insert(buf.begin() + long(1 + next() % (buf.size() - 1)), uint8_t(next())); break;
          default: buf[1 + next() % (buf.size() - 1)] ^= uint8_t(1u << (next() % 8)); break;
        }
      }
    }
    run_one(buf.data(), buf.size());
  }
  printf("standalone: %ld inputs, no findings\n", iters);
  return 0;
}
#endif
