// Guest RAM shared with QEMU (memory-backend-file, share=on): mmap of a file as a Buffer.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "binding.h"

using namespace migsafe;

namespace {

Napi::Value MapFile(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "path must be a string");
  std::string path = info[0].As<Napi::String>();
  if (!info[1].IsNumber()) throw Napi::TypeError::New(env, "size must be a number");
  double sz = info[1].As<Napi::Number>().DoubleValue();
  bool writable = info[2].ToBoolean();
  if (!(sz > 0) || sz != double(size_t(sz))) throw Napi::RangeError::New(env, "size must be a positive integer");
  size_t size = size_t(sz);
  int fd = open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) throw Napi::Error::New(env, "mapFile: open " + path + ": " + strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || size_t(st.st_size) < size) {
    close(fd);
    throw Napi::RangeError::New(env, "mapFile: " + path + " is smaller than " + std::to_string(size) + " bytes");
  }
  void* p = mmap(nullptr, size, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, 0);
  int e = errno;
  close(fd);  // the mapping keeps the file referenced
  if (p == MAP_FAILED) throw Napi::Error::New(env, "mapFile: mmap " + path + ": " + strerror(e));
  // The finalizer unmaps when the Buffer (and every view of its ArrayBuffer) is collected.
  return Napi::Buffer<uint8_t>::New(env, static_cast<uint8_t*>(p), size,
                                    [size](Napi::Env, uint8_t* q) { munmap(q, size); });
}

}  // namespace

void migsafe::InitMapFile(Napi::Env env, Napi::Object exports) {
  exports.Set("mapFile", Napi::Function::New(env, MapFile));
}
