// Run-time CPU dispatch: CPUID (via the compiler's cpu-model builtins, which also check that
// the OS saves the AVX/AVX-512 state) decides which compare pass runs.
#include <cstring>

#include "kernel.h"

namespace migsafe {

namespace {
struct Cpu {
  bool avx2 = false, avx512 = false, vbmi2 = false, vpopcntdq = false;
  Cpu() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2");
    avx512 = avx2 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512f");
    vbmi2 = avx512 && __builtin_cpu_supports("avx512vbmi2");
    vpopcntdq = avx512 && __builtin_cpu_supports("avx512vpopcntdq");
#endif
  }
};
const Cpu& cpu() {
  static Cpu c;
  return c;
}
}  // namespace

bool level_supported(Level l) {
  switch (l) {
    case Level::Scalar: return true;
    case Level::Avx2: return cpu().avx2;
    case Level::Avx512: return cpu().avx512;
  }
  return false;
}

bool cpu_has_vbmi2() { return cpu().vbmi2; }
bool cpu_has_vpopcntdq() { return cpu().vpopcntdq; }

int available_levels(Level* out) {
  int n = 0;
  if (cpu().avx512) out[n++] = Level::Avx512;
  if (cpu().avx2) out[n++] = Level::Avx2;
  out[n++] = Level::Scalar;
  return n;
}

Level best_level() {
  Level l[3];
  available_levels(l);
  return l[0];
}

const char* level_name(Level l) {
  switch (l) {
    case Level::Avx512: return "avx512bw";
    case Level::Avx2: return "avx2";
    default: return "scalar";
  }
}

bool parse_level(const char* s, Level* out) {
  if (!strcmp(s, "avx512bw")) *out = Level::Avx512;
  else if (!strcmp(s, "avx2")) *out = Level::Avx2;
  else if (!strcmp(s, "scalar")) *out = Level::Scalar;
  else return false;
  return true;
}

}  // namespace migsafe
