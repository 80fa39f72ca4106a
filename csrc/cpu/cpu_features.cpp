// Run-time CPU feature detection: the ISA-specific kernels are picked from the CPU's flags,
// never from the build machine's. PYQUANT_ISA=scalar|avx2|avx512 forces a lower level (tests).
// PYQUANT_CODES=convert|subnormal picks how the decode kernels turn weight codes into floats
// (see qmatmul_kernels.h); the default is "subnormal" on AMD x86 CPUs, "convert" elsewhere.
// PYQUANT_BF16_DOT=0 keeps bf16 x off the AVX512-BF16 dot products (qmatmul_kernels.h).
#include "pyquant/common.h"
#include "cpu_dispatch.h"

#include <atomic>
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
  // the AVX2 kernels are compiled with -mavx2 -mfma -mf16c -mbmi2 (CMakeLists.txt): all four
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
      __builtin_cpu_supports("bmi2"))
    best = Isa::Avx2;
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

// Subnormal codes: a masked code is used as a float's bit pattern, a subnormal number. That
// removes the int->float conversion from the inner loop (1.7-1.8x the dequantized FMAs per
// second on Zen 1, where subnormal FMA operands cost nothing). Intel cores may take a microcode
// assist on subnormal operands, so there the default stays with the conversion.
static bool detect_subnormal_codes() {
  bool on = false;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  on = __builtin_cpu_is("amd");
#endif
  if (const char* forced = std::getenv("PYQUANT_CODES")) {
    if (!std::strcmp(forced, "convert")) on = false;
    else if (!std::strcmp(forced, "subnormal")) on = true;
  }
  return on;
}

// A process-wide switch: -1 until first read, then detect()'s answer or what a setter stored.
static bool lazy_flag(std::atomic<int>& flag, bool (*detect)()) {
  int v = flag.load(std::memory_order_relaxed);
  if (v < 0) {
    v = detect() ? 1 : 0;
    flag.store(v, std::memory_order_relaxed);
  }
  return v == 1;
}

static std::atomic<int> g_subnormal{-1};

bool subnormal_codes() { return lazy_flag(g_subnormal, detect_subnormal_codes); }

Status set_cpu_codes(const char* mode) {
  if (!std::strcmp(mode, "convert")) g_subnormal.store(0);
  else if (!std::strcmp(mode, "subnormal")) g_subnormal.store(1);
  else if (!std::strcmp(mode, "auto")) g_subnormal.store(detect_subnormal_codes() ? 1 : 0);
  else {
    set_last_error(std::string("unknown code mode '") + mode + "' (use convert, subnormal or auto)");
    return kInvalidArgument;
  }
  return kOk;
}

const char* cpu_codes() { return subnormal_codes() ? "subnormal" : "convert"; }

static bool bf16_dot_available() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return active_isa() == Isa::Avx512 && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

// On where available, unless PYQUANT_BF16_DOT=0 (as set_cpu_codes("auto") honours PYQUANT_CODES,
// "auto" here honours it too).
static bool detect_bf16_dot() {
  const char* forced = std::getenv("PYQUANT_BF16_DOT");
  return bf16_dot_available() && !(forced && !std::strcmp(forced, "0"));
}

static std::atomic<int> g_bf16_dot{-1};

bool bf16_dot() { return lazy_flag(g_bf16_dot, detect_bf16_dot); }

Status set_cpu_bf16_dot(const char* mode) {
  if (!std::strcmp(mode, "off")) {
    g_bf16_dot.store(0);
  } else if (!std::strcmp(mode, "auto")) {
    g_bf16_dot.store(detect_bf16_dot() ? 1 : 0);
  } else if (!std::strcmp(mode, "on")) {
    if (!bf16_dot_available()) {
      set_last_error("bf16 dot products need the AVX-512 kernels on a CPU with AVX512-BF16 (kernels in use here: " +
                     std::string(cpu_isa()) + ")");
      return kUnsupported;
    }
    g_bf16_dot.store(1);
  } else {
    set_last_error(std::string("unknown bf16 dot mode '") + mode + "' (use on, off or auto)");
    return kInvalidArgument;
  }
  return kOk;
}

const char* cpu_bf16_dot() { return bf16_dot() ? "on" : "off"; }

const char* cpu_isa() {
  switch (active_isa()) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace pyquant
