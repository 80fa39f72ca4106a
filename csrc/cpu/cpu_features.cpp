// Run-time CPU feature detection: the ISA-specific kernels are picked from the CPU's flags,
// never from the build machine's. PYQUANT_ISA=scalar|avx2|avx512 forces a lower level (tests).
#include "pyquant/common.h"
#include "cpu_dispatch.h"

#include <cstdlib>
#include <cstring>
#include <string>

namespace pyquant {

static thread_local std::string g_last_error;
const char* last_error() { return g_last_error.c_str(); }
void set_last_error(const std::string& msg) { g_last_error = msg; }

static Isa detect() {
  Isa best = Isa::Scalar;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::Avx2;
  if (best == Isa::Avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    best = Isa::Avx512;
#endif
  if (const char* forced = std::getenv("PYQUANT_ISA")) {
    Isa want = best;
    if (!std::strcmp(forced, "scalar")) want = Isa::Scalar;
    else if (!std::strcmp(forced, "avx2")) want = Isa::Avx2;
    else if (!std::strcmp(forced, "avx512")) want = Isa::Avx512;
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;  // never above the hardware
  }
  return best;
}

Isa active_isa() {
  static const Isa isa = detect();
  return isa;
}

const char* cpu_isa() {
  switch (active_isa()) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace pyquant
