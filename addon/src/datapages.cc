// The pages of a file that hold data, by lseek(SEEK_DATA/SEEK_HOLE): a post-copy destination
// lists the guest RAM pages it has received without reading (and so allocating) a hole.
// Node has no SEEK_DATA; this is a thin wrapper over the syscall, off the event loop.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "binding.h"

using namespace migsafe;

namespace {

// Indexes of the pages of fd that are not wholly holes (a page is data if any byte is).
bool walk(int fd, off_t page, std::vector<uint32_t>& out, std::string& err) {
  off_t end = lseek(fd, 0, SEEK_END), pos = 0;
  if (end < 0) {
    err = std::string("lseek SEEK_END: ") + strerror(errno);
    return false;
  }
  if ((end - 1) / page > off_t(UINT32_MAX)) {
    err = "the file has more than 2^32 pages";
    return false;
  }
  while (pos < end) {
    off_t d = lseek(fd, pos, SEEK_DATA);
    if (d < 0) {
      if (errno == ENXIO) break;  // no data past pos
      err = std::string("lseek SEEK_DATA: ") + strerror(errno);
      return false;
    }
    off_t h = lseek(fd, d, SEEK_HOLE);
    if (h < 0) h = end;
    for (off_t p = d & ~(page - 1); p < h; p += page) out.push_back(uint32_t(p / page));
    // A hole may start inside a page already listed: continue from the next page.
    pos = (h + page - 1) & ~(page - 1);
  }
  return true;
}

// fd < 0: open path for the walk.
struct DataPagesJob {
  int fd;
  std::string path;
  off_t page;
  std::vector<uint32_t> pages;
  bool run(std::string& err) {
    int f = fd;
    if (f < 0) {
      f = open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (f < 0) {
        err = "dataPages: open " + path + ": " + strerror(errno);
        return false;
      }
    }
    std::string e;
    bool ok = walk(f, page, pages, e);
    if (fd < 0) close(f);
    if (!ok) err = "dataPages: " + (fd < 0 ? path : "fd " + std::to_string(fd)) + ": " + e;
    return ok;
  }
  Napi::Value done(Napi::Env env) {
    auto out = Napi::Uint32Array::New(env, pages.size());
    if (!pages.empty()) memcpy(out.Data(), pages.data(), pages.size() * 4);
    return out;
  }
};

// dataPagesAsync(fd or path, pageSize) -> Promise<Uint32Array>
Napi::Value DataPagesAsync(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  int fd = -1;
  std::string path;
  if (info[0].IsNumber()) {
    fd = info[0].As<Napi::Number>().Int32Value();
    if (fd < 0) throw Napi::RangeError::New(env, "dataPages: fd must be >= 0");
  } else if (info[0].IsString()) {
    path = info[0].As<Napi::String>();
  } else {
    throw Napi::TypeError::New(env, "dataPages: file must be an fd or a path");
  }
  if (!info[1].IsNumber()) throw Napi::TypeError::New(env, "dataPages: pageSize must be a number");
  int64_t page = info[1].As<Napi::Number>().Int64Value();
  if (page < 512 || page > (int64_t(1) << 30) || (page & (page - 1)))
    throw Napi::RangeError::New(env, "dataPages: pageSize must be a power of two in 512..2^30");
  return queue_job(env, DataPagesJob{fd, std::move(path), off_t(page), {}});
}

}  // namespace

void migsafe::InitDataPages(Napi::Env env, Napi::Object exports) {
  exports.Set("dataPagesAsync", Napi::Function::New(env, DataPagesAsync));
}
