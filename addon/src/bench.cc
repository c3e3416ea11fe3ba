// The in-addon benchmark loop behind `migsafe bench diff` (bench/diff.ts): kernel loops timed
// inside C++, so that the figures carry no per-call N-API cost.
#include <time.h>

#include <chrono>
#include <cstring>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "batch.h"
#include "binding.h"

using namespace migsafe;

namespace {

// benchKernel(op, pairs, {level, repeats, inner, codec, codecLevel, threads}): runs a kernel
// loop over the page pairs (8192-byte records: old page, new page) entirely in C++, so the
// numbers carry no per-call N-API cost. Returns {seconds, cpuSeconds: per-repeat wall and
// thread-CPU times of `inner` passes, bytes: output bytes of one pass}. Setup is outside the
// timed region. `threads` (floor only) splits each pass over that many threads, started per
// pass as encode_batch starts its own: what reading the pages scales to on this host, the
// reference for the batch's thread scaling.
Napi::Value BenchKernel(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  std::string op = info[0].As<Napi::String>();
  Span pairs = bytes_arg(env, info[1], "pairs");
  if (pairs.n % (2 * kPage)) throw Napi::RangeError::New(env, "pairs must be 8192-byte records");
  size_t n = pairs.n / (2 * kPage);
  auto o = info[2].IsObject() ? info[2].As<Napi::Object>() : Napi::Object::New(env);
  Level l = level_arg(env, o.Get("level"));
  int repeats = o.Has("repeats") ? o.Get("repeats").As<Napi::Number>().Int32Value() : 5;
  int inner = o.Has("inner") ? o.Get("inner").As<Napi::Number>().Int32Value() : 1;
  Codec codec = Codec::None;
  int clevel = 1;
  if (o.Has("codec")) codec = codec_arg(env, o.Get("codec"));
  if (o.Has("codecLevel")) clevel = o.Get("codecLevel").As<Napi::Number>().Int32Value();
  int threads = o.Has("threads") ? o.Get("threads").As<Napi::Number>().Int32Value() : 1;
  if (threads < 1 || threads > 64) throw Napi::RangeError::New(env, "benchKernel: threads must be 1..64");
  if (threads > 1 && op != "floor") throw Napi::RangeError::New(env, "benchKernel: threads > 1 is only for op floor");
  auto oldp = [&](size_t i) { return pairs.p + i * 2 * kPage; };
  auto newp = [&](size_t i) { return pairs.p + i * 2 * kPage + kPage; };

  // Inputs some ops need, prepared outside the timed region.
  std::vector<uint8_t> deltas, scratch, ram, shadow;
  std::vector<std::pair<size_t, int>> dl;  // offset, length (-1: full page)
  if (op == "decode") {
    alignas(64) uint8_t tmp[kDeltaCap];
    for (size_t i = 0; i < n; i++) {
      int len = encode_page(best_level(), oldp(i), newp(i), tmp);
      dl.push_back({deltas.size(), len});
      if (len > 0) deltas.insert(deltas.end(), tmp, tmp + len);
    }
    scratch.resize(n * kPage);
    for (size_t i = 0; i < n; i++) memcpy(scratch.data() + i * kPage, oldp(i), kPage);
  } else if (op == "batch") {
    ram.resize(n * kPage);
    shadow.resize(n * kPage);
  }

  std::vector<double> secs, cpu_secs;
  double bytes = 0;
  auto thread_cpu = [] {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
  };
  alignas(64) uint8_t buf[kDeltaCap];
  ByteVec cbuf;
  Bytes batch_out;
  std::string err;
  for (int r = 0; r < repeats; r++) {
    if (op == "batch") {
      for (size_t i = 0; i < n; i++) memcpy(ram.data() + i * kPage, newp(i), kPage);
    }
    double pass_bytes = 0;
    double t_excl = 0, c_excl = 0;
    double c0 = thread_cpu();
    auto t0 = std::chrono::steady_clock::now();
    for (int k = 0; k < inner; k++) {
      pass_bytes = 0;
      if (op == "encode") {
        for (size_t i = 0; i < n; i++) {
          int len = encode_page(l, oldp(i), newp(i), buf);
          pass_bytes += len < 0 ? double(kPage) : double(len);
        }
      } else if (op == "encode-overlapped") {
        // The same encoder, each page's compare pass spread over the previous page's runs.
        PageDiff pd[2];
        DiffCursor cur[2];
        diff_begin(&cur[0], l, oldp(0), newp(0), nullptr, &pd[0], false);
        for (size_t i = 0; i < n; i++) {
          uint32_t crc;
          diff_end(&cur[i & 1], &crc);
          DiffCursor* next = i + 1 < n ? &cur[(i + 1) & 1] : nullptr;
          if (next) diff_begin(next, l, oldp(i + 1), newp(i + 1), nullptr, &pd[(i + 1) & 1], false);
          int len = encode_diff_overlapped(l, pd[i & 1], newp(i), buf, next);
          pass_bytes += len < 0 ? double(kPage) : double(len);
        }
      } else if (op == "wordwise") {
        for (size_t i = 0; i < n; i++) {
          int len = encode_page_wordwise(oldp(i), newp(i), buf);
          pass_bytes += len < 0 ? double(kPage) : double(len);
        }
      } else if (op == "floor") {
        auto part = [&](int t) {
          int differ = 0;
          for (size_t i = n * size_t(t) / size_t(threads); i < n * size_t(t + 1) / size_t(threads); i++)
            differ += floor_compare(l, oldp(i), newp(i));
          return differ;
        };
        std::vector<int> differ(size_t(threads), 0);
        std::vector<std::thread> others;
        try {
          for (int t = 1; t < threads; t++) others.emplace_back([&, t] { differ[size_t(t)] = part(t); });
        } catch (const std::system_error& e) {  // no thread: join those started, then report
          for (auto& th : others) th.join();
          throw Napi::Error::New(env, std::string("benchKernel: cannot start a thread: ") + e.what());
        }
        differ[0] = part(0);
        for (auto& th : others) th.join();
        for (int d : differ) pass_bytes += d;
      } else if (op == "decode") {
        // Applying the same delta again is idempotent, so the page can be decoded in place.
        const char* e;
        for (size_t i = 0; i < n; i++) {
          if (dl[i].second > 0) decode_page(deltas.data() + dl[i].first, size_t(dl[i].second), scratch.data() + i * kPage, &e);
          else if (dl[i].second < 0) memcpy(scratch.data() + i * kPage, newp(i), kPage);
          pass_bytes += scratch[i * kPage];
        }
      } else if (op == "crc") {
        for (size_t i = 0; i < n; i++) pass_bytes += crc32c(newp(i), kPage) & 1;
      } else if (op == "compress-page") {
        for (size_t i = 0; i < n; i++) {
          if (!compress(codec, clevel, newp(i), kPage, cbuf, err)) throw Napi::Error::New(env, err);
          pass_bytes += double(cbuf.size());
        }
      } else if (op == "batch") {
        // Shadow reset excluded from the time: each pass must see the same changes.
        auto ta = std::chrono::steady_clock::now();
        double ca = thread_cpu();
        for (size_t i = 0; i < n; i++) memcpy(shadow.data() + i * kPage, oldp(i), kPage);
        c_excl += thread_cpu() - ca;
        t_excl += std::chrono::duration<double>(std::chrono::steady_clock::now() - ta).count();
        // Output memory kept from pass to pass, as encodeBatch keeps it from call to call.
        batch_out.size = 0;
        BatchOptions bo;
        bo.level = l;
        if (!encode_batch(ram.data(), shadow.data(), n, nullptr, 0, bo, batch_out, err)) throw Napi::Error::New(env, err);
        pass_bytes = double(batch_out.size);
      } else {
        throw Napi::RangeError::New(env, "unknown bench op " + op);
      }
    }
    secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() - t_excl);
    cpu_secs.push_back(thread_cpu() - c0 - c_excl);
    bytes = pass_bytes;
  }
  auto res = Napi::Object::New(env);
  auto arr = Napi::Array::New(env, secs.size());
  for (size_t i = 0; i < secs.size(); i++) arr.Set(uint32_t(i), secs[i]);
  res.Set("seconds", arr);
  auto carr = Napi::Array::New(env, cpu_secs.size());
  for (size_t i = 0; i < cpu_secs.size(); i++) carr.Set(uint32_t(i), cpu_secs[i]);
  res.Set("cpuSeconds", carr);
  res.Set("bytes", bytes);
  return res;
}

}  // namespace

void migsafe::InitBench(Napi::Env env, Napi::Object exports) {
  exports.Set("benchKernel", Napi::Function::New(env, BenchKernel));
}
