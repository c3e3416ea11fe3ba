// N-API surface of the kernel: argument checks, Buffers and workers only. The contract is
// src/kernel/native.ts.
#include <cstring>
#include <napi.h>
#include <string>
#include <vector>

#include "batch.h"
#include "binding.h"
#include "codecs.h"
#include "kernel.h"

using namespace migsafe;

Level migsafe::level_arg(const Napi::Env& env, const Napi::Value& v) {
  if (v.IsUndefined() || v.IsNull()) return best_level();
  if (!v.IsString()) throw Napi::TypeError::New(env, "level must be a string");
  std::string s = v.As<Napi::String>();
  Level l;
  if (!parse_level(s.c_str(), &l)) throw Napi::RangeError::New(env, "unknown level '" + s + "'");
  if (!level_supported(l)) throw Napi::RangeError::New(env, "level '" + s + "' is not supported by this CPU");
  return l;
}

Codec migsafe::codec_arg(const Napi::Env& env, const Napi::Value& v) {
  if (!v.IsString()) throw Napi::TypeError::New(env, "codec must be a string");
  std::string s = v.As<Napi::String>();
  Codec c;
  if (!parse_codec(s.c_str(), &c)) throw Napi::RangeError::New(env, "unknown codec '" + s + "'");
  return c;
}

namespace {

Span page_arg(const Napi::Env& env, const Napi::Value& v, const char* name) {
  Span s = bytes_arg(env, v, name);
  if (s.n != kPage) throw Napi::RangeError::New(env, std::string(name) + " must be exactly 4096 bytes");
  return s;
}

// A synchronous batch is encoded into memory kept warm from call to call and copied once
// into a buffer V8 allocates and frees itself, so the collector sees its size and reclaims it
// promptly. (Handing our memory over with a finalizer let dead batches pile up until the event
// loop turned, finalizers run only then: a loop of dense batches reached a gigabyte of RSS.)
Napi::Buffer<uint8_t> copy_out(Napi::Env env, const Bytes& b) {
  if (b.size == 0) return Napi::Buffer<uint8_t>::New(env, 0);
  return Napi::Buffer<uint8_t>::Copy(env, b.data, b.size);
}

// An asynchronous batch is handed over without a copy (the event loop turns between such
// calls, so its finalizer runs soon), with its size reported to V8 so that collections keep
// pace with the memory held.
Napi::Buffer<uint8_t> hand_over(Napi::Env env, Bytes& b) {
  if (b.size == 0) return Napi::Buffer<uint8_t>::New(env, 0);
  size_t n = b.size, cap = b.cap;
  uint8_t* p = b.release();
  Napi::MemoryManagement::AdjustExternalMemory(env, int64_t(cap));
  // The capacity rides along as the finalizer's hint (no allocation for it).
  return Napi::Buffer<uint8_t>::New(
      env, p, n,
      [](Napi::Env e, uint8_t* q, void* c) {
        size_t cap = reinterpret_cast<size_t>(c);
        Bytes::free_released(q, cap);
        Napi::MemoryManagement::AdjustExternalMemory(e, -int64_t(cap));
      },
      reinterpret_cast<void*>(cap));
}

Napi::Value CpuLevel(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), level_name(best_level()));
}

Napi::Value Levels(const Napi::CallbackInfo& info) {
  Level l[3];
  int n = available_levels(l);
  auto a = Napi::Array::New(info.Env(), n);
  for (int i = 0; i < n; i++) a.Set(uint32_t(i), level_name(l[i]));
  return a;
}

Napi::Value Crc32cHardware(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), crc32c_hw());
}

Napi::Value EncodePage(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  Span o = page_arg(env, info[0], "oldPage"), n = page_arg(env, info[1], "newPage");
  Level l = level_arg(env, info[2]);
  alignas(64) uint8_t out[kDeltaCap];
  int len = encode_page(l, o.p, n.p, out);
  if (len < 0) return env.Null();
  return Napi::Buffer<uint8_t>::Copy(env, out, size_t(len));
}

Napi::Value EncodePageWordwise(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  Span o = page_arg(env, info[0], "oldPage"), n = page_arg(env, info[1], "newPage");
  uint8_t out[kPage];
  int len = encode_page_wordwise(o.p, n.p, out);
  if (len < 0) return env.Null();
  return Napi::Buffer<uint8_t>::Copy(env, out, size_t(len));
}

Napi::Value DecodePage(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  Span o = page_arg(env, info[0], "oldPage");
  Span d = bytes_arg(env, info[1], "delta");
  auto out = Napi::Buffer<uint8_t>::Copy(env, o.p, kPage);
  const char* err = nullptr;
  if (decode_page(d.p, d.n, out.Data(), &err) != 0)
    throw Napi::Error::New(env, std::string("xbzrle: ") + err);
  return out;
}

struct BatchArgs {
  Span ram, shadow;
  std::vector<uint32_t> pages;
  bool all = true;
  BatchOptions opt;
  size_t npages = 0;
};

BatchArgs batch_args(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  BatchArgs a;
  a.ram = bytes_arg(env, info[0], "ram");
  a.shadow = bytes_arg(env, info[1], "shadow");
  if (a.ram.n != a.shadow.n) throw Napi::RangeError::New(env, "ram and shadow differ in size");
  if (a.ram.n % kPage) throw Napi::RangeError::New(env, "ram size is not a multiple of 4096");
  a.npages = a.ram.n / kPage;
  if (!info[2].IsNull() && !info[2].IsUndefined()) {
    if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array)
      throw Napi::TypeError::New(env, "pages must be a Uint32Array or null");
    auto p = info[2].As<Napi::Uint32Array>();
    // Copied: the worker must not see later changes to the caller's array.
    a.pages.assign(p.Data(), p.Data() + p.ElementLength());
    a.all = false;
  }
  a.opt.level = best_level();
  if (info[3].IsObject()) {
    auto o = info[3].As<Napi::Object>();
    a.opt.level = level_arg(env, o.Get("level"));
    auto t = o.Get("threads");
    if (!t.IsUndefined()) {
      if (!t.IsNumber()) throw Napi::TypeError::New(env, "threads must be a number");
      int n = t.As<Napi::Number>().Int32Value();
      if (n < 1 || n > 64) throw Napi::RangeError::New(env, "threads must be 1..64");
      a.opt.threads = n;
    }
    auto u = o.Get("updateShadow");
    if (!u.IsUndefined()) a.opt.update_shadow = u.ToBoolean();
    auto dn = o.Get("dense");
    if (!dn.IsUndefined()) a.opt.dense = dn.ToBoolean();
  } else if (!info[3].IsUndefined()) {
    throw Napi::TypeError::New(env, "options must be an object");
  }
  return a;
}

bool run_batch(BatchArgs& a, Bytes& out, std::string& err) {
  // An empty list is no pages; encode_batch reads a null list as "every page".
  if (!a.all && a.pages.empty()) return true;
  return encode_batch(a.ram.p, a.shadow.p, a.npages, a.all ? nullptr : a.pages.data(),
                      a.all ? 0 : a.pages.size(), a.opt, out, err);
}

constexpr size_t kCopyMax = size_t(8) << 20;

Napi::Value EncodeBatch(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  BatchArgs a = batch_args(info);
  // Encoded into kept (warm) memory, then copied out once.
  Bytes out = take_kept_bytes();
  std::string err;
  if (!run_batch(a, out, err)) {
    keep_bytes(std::move(out));
    throw Napi::RangeError::New(env, err);
  }
  // Past kCopyMax the copy costs more than it saves: V8 maps such a buffer fresh every time.
  if (out.size > kCopyMax) return hand_over(env, out);
  Napi::Buffer<uint8_t> r = copy_out(env, out);
  keep_bytes(std::move(out));
  return r;
}

// encodeBatch into the caller's buffer (reused from call to call: no allocation, no copy).
// Returns the bytes written, or -1 before encoding anything when out is smaller than the
// batch could need (batch_bound), so that no shadow update is ever lost with its records.
Napi::Value EncodeBatchInto(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  BatchArgs a = batch_args(info);
  Span o = bytes_arg(env, info[4], "out");
  auto overlaps = [&](const Span& x) { return o.p < x.p + x.n && x.p < o.p + o.n; };
  if (overlaps(a.ram) || overlaps(a.shadow)) throw Napi::RangeError::New(env, "out overlaps ram or shadow");
  size_t count = a.all ? a.npages : a.pages.size();
  if (o.n < batch_bound(count)) return Napi::Number::New(env, -1);
  Bytes out = Bytes::borrow(o.p, o.n);
  std::string err;
  if (!run_batch(a, out, err)) throw Napi::RangeError::New(env, err);
  return Napi::Number::New(env, double(out.size));
}

struct EncodeJob {
  BatchArgs a;
  Bytes out;
  bool run(std::string& err) { return run_batch(a, out, err); }
  Napi::Value done(Napi::Env env) { return hand_over(env, out); }
};

Napi::Value EncodeBatchAsync(const Napi::CallbackInfo& info) {
  return queue_job(info.Env(), EncodeJob{batch_args(info), Bytes()}, {info[0], info[1]});
}

Napi::Value ApplyBatch(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  Span img = bytes_arg(env, info[0], "image");
  Span rec = bytes_arg(env, info[1], "records");
  if (img.n % kPage) throw Napi::RangeError::New(env, "image size is not a multiple of 4096");
  size_t applied = 0;
  std::string err;
  if (!apply_batch(img.p, img.n / kPage, rec.p, rec.n, &applied, err))
    throw Napi::Error::New(env, "applyBatch: " + err + "; image left untouched");
  auto r = Napi::Object::New(env);
  r.Set("records", Napi::Number::New(env, double(applied)));
  return r;
}

Napi::Value ScanDirty(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  Span ram = bytes_arg(env, info[0], "ram"), sh = bytes_arg(env, info[1], "shadow");
  if (ram.n != sh.n || ram.n % kPage) throw Napi::RangeError::New(env, "ram and shadow must be equal multiples of 4096 bytes");
  Level l = level_arg(env, info[2]);
  std::vector<uint32_t> dirty;
  for (size_t p = 0; p < ram.n / kPage; p++)
    if (!pages_equal(l, ram.p + p * kPage, sh.p + p * kPage)) dirty.push_back(uint32_t(p));
  auto out = Napi::Uint32Array::New(env, dirty.size());
  if (!dirty.empty()) memcpy(out.Data(), dirty.data(), dirty.size() * 4);
  return out;
}

int level_num(const Napi::Env& env, const Napi::Value& v) {
  if (!v.IsNumber()) throw Napi::TypeError::New(env, "level must be a number");
  return v.As<Napi::Number>().Int32Value();
}

size_t raw_len_arg(const Napi::Env& env, const Napi::Value& v) {
  if (!v.IsNumber()) throw Napi::TypeError::New(env, "rawLength must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > double(1ULL << 32) || d != double(size_t(d)))
    throw Napi::RangeError::New(env, "rawLength must be an integer in 0..2^32");
  return size_t(d);
}

Napi::Value Compress(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  Codec c = codec_arg(env, info[0]);
  int level = level_num(env, info[1]);
  Span d = bytes_arg(env, info[2], "data");
  ByteVec out;
  std::string err;
  if (!compress(c, level, d.p, d.n, out, err)) throw Napi::Error::New(env, err);
  return Napi::Buffer<uint8_t>::Copy(env, out.data(), out.size());
}

Napi::Value Decompress(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  Codec c = codec_arg(env, info[0]);
  Span d = bytes_arg(env, info[1], "data");
  size_t raw = raw_len_arg(env, info[2]);
  auto out = Napi::Buffer<uint8_t>::New(env, raw);
  std::string err;
  if (!decompress(c, d.p, d.n, out.Data(), raw, err)) throw Napi::Error::New(env, err);
  return out;
}

struct CodecJob {
  bool comp;
  Codec c;
  int level;
  Span d;
  size_t raw;
  ByteVec out;
  bool run(std::string& err) {
    if (comp) return compress(c, level, d.p, d.n, out, err);
    out.resize(raw);
    return decompress(c, d.p, d.n, out.data(), raw, err);
  }
  Napi::Value done(Napi::Env env) { return Napi::Buffer<uint8_t>::Copy(env, out.data(), out.size()); }
};

Napi::Value CompressAsync(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  Codec c = codec_arg(env, info[0]);
  int level = level_num(env, info[1]);
  Span d = bytes_arg(env, info[2], "data");
  return queue_job(env, CodecJob{true, c, level, d, 0, ByteVec()}, {info[2]});
}

Napi::Value DecompressAsync(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  Codec c = codec_arg(env, info[0]);
  Span d = bytes_arg(env, info[1], "data");
  size_t raw = raw_len_arg(env, info[2]);
  return queue_job(env, CodecJob{false, c, 0, d, raw, ByteVec()}, {info[1]});
}

Napi::Value PackBatch(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  Span rec = bytes_arg(env, info[0], "records");
  Codec c = codec_arg(env, info[1]);
  int level = level_num(env, info[2]);
  if (!info[3].IsNumber()) throw Napi::TypeError::New(env, "smallMax must be a number");
  size_t small_max = size_t(info[3].As<Napi::Number>().Uint32Value());
  Napi::Buffer<uint8_t> out;
  std::string err;
  auto alloc = [&](size_t n) {
    out = Napi::Buffer<uint8_t>::New(env, n);
    return out.Data();
  };
  if (!pack_records(rec.p, rec.n, c, level, small_max, alloc, err)) throw Napi::RangeError::New(env, err);
  return out;
}

Napi::Value UnpackBatch(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  Span in = bytes_arg(env, info[0], "packed");
  ByteVec out;
  std::string err;
  if (!unpack_records(in.p, in.n, out, err)) throw Napi::RangeError::New(env, err);
  return Napi::Buffer<uint8_t>::Copy(env, out.data(), out.size());
}

Napi::Value Crc32c(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  Span d = bytes_arg(env, info[0], "data");
  uint32_t seed = 0;
  if (!info[1].IsUndefined()) {
    if (!info[1].IsNumber()) throw Napi::TypeError::New(env, "seed must be a number");
    seed = info[1].As<Napi::Number>().Uint32Value();
  }
  return Napi::Number::New(env, crc32c(d.p, d.n, seed));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitFdPass(env, exports);
  InitDataPages(env, exports);
  InitMapFile(env, exports);
  InitBench(env, exports);
  exports.Set("cpuLevel", Napi::Function::New(env, CpuLevel));
  exports.Set("levels", Napi::Function::New(env, Levels));
  exports.Set("crc32cHardware", Napi::Function::New(env, Crc32cHardware));
  exports.Set("encodePage", Napi::Function::New(env, EncodePage));
  exports.Set("encodePageWordwise", Napi::Function::New(env, EncodePageWordwise));
  exports.Set("decodePage", Napi::Function::New(env, DecodePage));
  exports.Set("encodeBatch", Napi::Function::New(env, EncodeBatch));
  exports.Set("encodeBatchAsync", Napi::Function::New(env, EncodeBatchAsync));
  exports.Set("encodeBatchInto", Napi::Function::New(env, EncodeBatchInto));
  exports.Set("batchBound", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
    if (!info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "pages must be a number");
    double n = info[0].As<Napi::Number>().DoubleValue();
    if (!(n >= 0) || n > double(uint32_t(-1))) throw Napi::RangeError::New(info.Env(), "pages must be 0..2^32-1");
    return Napi::Number::New(info.Env(), double(batch_bound(size_t(n))));
  }));
  exports.Set("applyBatch", Napi::Function::New(env, ApplyBatch));
  exports.Set("scanDirty", Napi::Function::New(env, ScanDirty));
  exports.Set("compress", Napi::Function::New(env, Compress));
  exports.Set("decompress", Napi::Function::New(env, Decompress));
  exports.Set("compressAsync", Napi::Function::New(env, CompressAsync));
  exports.Set("decompressAsync", Napi::Function::New(env, DecompressAsync));
  exports.Set("crc32c", Napi::Function::New(env, Crc32c));
  exports.Set("packBatch", Napi::Function::New(env, PackBatch));
  exports.Set("unpackBatch", Napi::Function::New(env, UnpackBatch));
  return exports;
}

}  // namespace

NODE_API_MODULE(migsafe, Init)
