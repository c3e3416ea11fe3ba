// The sidecar's end of the patched QEMU's migsafe-ft socket (qemu-patches/PROTOCOL.md):
// SOCK_SEQPACKET messages with SCM_RIGHTS, eventfds, and mapping a received fd.
// Node has no SCM_RIGHTS of its own; everything here is a thin wrapper over the syscalls.
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "binding.h"

using namespace migsafe;

namespace {

constexpr size_t kMaxMessage = 64 * 1024;
constexpr size_t kMaxFds = 64;

Napi::Value Fail(Napi::Env env, const std::string& what) {
  Napi::Error::New(env, what + ": " + strerror(errno)).ThrowAsJavaScriptException();
  return env.Undefined();
}

int PollFor(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  int r;
  do r = poll(&p, 1, timeout_ms);
  while (r < 0 && errno == EINTR);
  return r;
}

// ftConnect(path) -> fd
Napi::Value FtConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>();
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    Napi::Error::New(env, "socket path too long: " + path).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return Fail(env, "socket");
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0) {
    int e = errno;
    close(fd);
    errno = e;
    return Fail(env, "connect " + path);
  }
  return Napi::Number::New(env, fd);
}

// ftSend(fd, message, sendFd?)
Napi::Value FtSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  std::string msg = info[1].As<Napi::String>();
  iovec iov{const_cast<char*>(msg.data()), msg.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int))];
  if (info.Length() > 2 && info[2].IsNumber()) {
    int pass = info[2].As<Napi::Number>().Int32Value();
    mh.msg_control = ctrl;
    mh.msg_controllen = sizeof(ctrl);
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &pass, sizeof(int));
  }
  ssize_t n;
  do n = sendmsg(fd, &mh, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0) return Fail(env, "sendmsg");
  return env.Undefined();
}

// ftRecv(fd, timeoutMs) -> { message, fds } ; throws on timeout or a closed socket
Napi::Value FtRecv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  int timeout = info[1].As<Napi::Number>().Int32Value();
  int r = PollFor(fd, timeout);
  if (r < 0) return Fail(env, "poll");
  if (r == 0) {
    Napi::Error::New(env, "no reply from QEMU's migsafe-ft socket within " + std::to_string(timeout) + " ms")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::vector<char> buf(kMaxMessage);
  iovec iov{buf.data(), buf.size()};
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * kMaxFds)];
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = ctrl;
  mh.msg_controllen = sizeof(ctrl);
  ssize_t n;
  do n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) return Fail(env, "recvmsg");
  if (n == 0) {
    Napi::Error::New(env, "QEMU closed the migsafe-ft socket").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array fds = Napi::Array::New(env);
  uint32_t k = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; i++) {
      int f;
      memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds.Set(k++, Napi::Number::New(env, f));
    }
  }
  if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
    for (uint32_t i = 0; i < k; i++) close(fds.Get(i).As<Napi::Number>().Int32Value());
    Napi::Error::New(env, "migsafe-ft message or its fds were truncated").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("message", Napi::String::New(env, buf.data(), size_t(n)));
  out.Set("fds", fds);
  return out;
}

// eventfdSignal(fd): adds 1 to the counter.
Napi::Value EventfdSignal(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  uint64_t one = 1;
  ssize_t n;
  do n = write(fd, &one, sizeof(one));
  while (n < 0 && errno == EINTR);
  if (n != sizeof(one)) return Fail(env, "eventfd write");
  return env.Undefined();
}

// Waits for an eventfd off the event loop; resolves with the counter, or 0 on timeout.
struct EventfdWaitJob {
  int fd, timeout;
  uint64_t value = 0;
  bool run(std::string& err) {
    int r = PollFor(fd, timeout);
    if (r < 0) {
      err = std::string("poll: ") + strerror(errno);
      return false;
    }
    if (r == 0) return true;
    ssize_t n;
    do n = read(fd, &value, sizeof(value));
    while (n < 0 && errno == EINTR);
    if (n == sizeof(value)) return true;
    err = std::string("eventfd read: ") + strerror(errno);
    return false;
  }
  Napi::Value done(Napi::Env env) { return Napi::Number::New(env, double(value)); }
};

Napi::Value EventfdWaitAsync(const Napi::CallbackInfo& info) {
  return queue_job(info.Env(), EventfdWaitJob{info[0].As<Napi::Number>().Int32Value(),
                                              info[1].As<Napi::Number>().Int32Value()});
}

// mapFd(fd, length, offset, writable) -> Buffer aliasing a MAP_SHARED mapping.
Napi::Value MapFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  size_t len = size_t(info[1].As<Napi::Number>().Int64Value());
  off_t off = off_t(info[2].As<Napi::Number>().Int64Value());
  bool writable = info[3].ToBoolean();
  if (len == 0) {
    Napi::Error::New(env, "mapFd: zero length").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  void* p = mmap(nullptr, len, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, off);
  if (p == MAP_FAILED) return Fail(env, "mmap");
  return Napi::Buffer<uint8_t>::New(env, static_cast<uint8_t*>(p), len,
                                    [len](Napi::Env, uint8_t* data) { munmap(data, len); });
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  close(info[0].As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

}  // namespace

void migsafe::InitFdPass(Napi::Env env, Napi::Object exports) {
  exports.Set("ftConnect", Napi::Function::New(env, FtConnect));
  exports.Set("ftSend", Napi::Function::New(env, FtSend));
  exports.Set("ftRecv", Napi::Function::New(env, FtRecv));
  exports.Set("eventfdSignal", Napi::Function::New(env, EventfdSignal));
  exports.Set("eventfdWaitAsync", Napi::Function::New(env, EventfdWaitAsync));
  exports.Set("mapFd", Napi::Function::New(env, MapFd));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd));
}
