// What the N-API files of the addon share: argument checks, the one async-job helper, and
// each file's Init (addon.cc calls them all).
#pragma once
#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "codecs.h"
#include "kernel.h"

namespace migsafe {

struct Span {
  uint8_t* p;
  size_t n;
};

inline Span bytes_arg(const Napi::Env& env, const Napi::Value& v, const char* name) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw Napi::TypeError::New(env, std::string(name) + " must be a Uint8Array or Buffer");
  auto a = v.As<Napi::Uint8Array>();
  return {a.Data(), a.ByteLength()};
}

// In addon.cc. undefined or null: the best level.
Level level_arg(const Napi::Env& env, const Napi::Value& v);
Codec codec_arg(const Napi::Env& env, const Napi::Value& v);

// A Job is `bool run(std::string& err)`, called off the event loop, and
// `Napi::Value done(Napi::Env)`, called on it after run returned true.
template <class Job>
class JobWorker : public Napi::AsyncWorker {
 public:
  JobWorker(Napi::Env env, Job job)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), job_(std::move(job)) {}
  void Execute() override {
    std::string err;
    if (!job_.run(err)) SetError(err);
  }
  void OnOK() override { deferred_.Resolve(job_.done(Env())); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

  Napi::Promise::Deferred deferred_;
  std::vector<Napi::ObjectReference> refs_;

 private:
  Job job_;
};

// Runs job on the thread pool; the promise resolves with job.done(env) or rejects with the
// error run reported. keep: the JS buffers whose memory the job uses, held until it settles.
template <class Job>
Napi::Promise queue_job(Napi::Env env, Job job, std::initializer_list<Napi::Value> keep = {}) {
  auto* w = new JobWorker<Job>(env, std::move(job));
  for (const auto& v : keep)
    if (v.IsObject()) w->refs_.push_back(Napi::Persistent(v.As<Napi::Object>()));
  Napi::Promise p = w->deferred_.Promise();
  w->Queue();
  return p;
}

// The other N-API files, each adding its functions to the exports.
void InitBench(Napi::Env env, Napi::Object exports);      // bench.cc: the in-addon benchmark loop
void InitDataPages(Napi::Env env, Napi::Object exports);  // datapages.cc: SEEK_DATA over a file
void InitFdPass(Napi::Env env, Napi::Object exports);     // fdpass.cc: the patched QEMU's socket
void InitMapFile(Napi::Env env, Napi::Object exports);    // mapfile.cc: mmap of guest RAM

}  // namespace migsafe
