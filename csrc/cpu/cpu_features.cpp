// Run-time CPU feature detection: the ISA-specific kernels are picked from the CPU's flags,
// never from the build machine's. PYQUANT_ISA=scalar|avx2|avx512 forces a lower level (tests).
// PYQUANT_CODES=convert|subnormal picks how the decode kernels turn weight codes into floats
// (see qmatmul_kernels.h); the default is "subnormal" on AMD x86 CPUs, "convert" elsewhere.
// PYQUANT_BF16_DOT=0 keeps bf16 x off the AVX512-BF16 dot products (qmatmul_kernels.h),
// PYQUANT_BF16_GEMM=0|1 the prefill GEMM off or on them (default: on for AMD CPUs), and
// PYQUANT_VNNI=0 the -a8 kernels off AVX512-VNNI's vpdpbusd (qmatmul_a8.h, qmatmul_dot_prefill.h),
// and PYQUANT_AMX=0 the weight-only prefill GEMM off AMX tiles (qmatmul_amx.h).
#include "pyquant/common.h"
#include "cpu_dispatch.h"

#if defined(__linux__) && defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

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
template <class Detect>
static bool lazy_flag(std::atomic<int>& flag, Detect detect) {
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

// An optional instruction path of the AVX-512 kernels: where the CPU has it, on by default where
// ``default_on`` says so, its environment variable "0" or "1" overriding that (as
// set_cpu_codes("auto") honours PYQUANT_CODES, "auto" here honours it too); the setters switch it
// for the whole process.
static bool always() { return true; }

struct OptionalPath {
  const char* env;    // PYQUANT_...: "0" turns it off, "1" on (where available)
  const char* what;   // in messages: "bf16 dot"
  const char* needs;  // "AVX512-BF16"
  bool (*cpu_has)();  // the CPU's flag (the AVX-512 kernels must be in use too)
  bool (*default_on)() = always;
  std::atomic<int> flag{-1};
};

static bool path_available(const OptionalPath& p) { return active_isa() == Isa::Avx512 && p.cpu_has(); }

static bool path_detect(const OptionalPath& p) {
  const char* forced = std::getenv(p.env);
  if (!path_available(p) || (forced && !std::strcmp(forced, "0"))) return false;
  return (forced && !std::strcmp(forced, "1")) || p.default_on();
}

static bool path_on(OptionalPath& p) { return lazy_flag(p.flag, [&p] { return path_detect(p); }); }

static Status set_path(OptionalPath& p, const char* mode) {
  if (!std::strcmp(mode, "off")) {
    p.flag.store(0);
  } else if (!std::strcmp(mode, "auto")) {
    p.flag.store(path_detect(p) ? 1 : 0);
  } else if (!std::strcmp(mode, "on")) {
    if (!path_available(p)) {
      set_last_error(std::string(p.what) + " needs the AVX-512 kernels on a CPU with " + p.needs +
                     " (kernels in use here: " + cpu_isa() + ")");
      return kUnsupported;
    }
    p.flag.store(1);
  } else {
    set_last_error(std::string("unknown ") + p.what + " mode '" + mode + "' (use on, off or auto)");
    return kInvalidArgument;
  }
  return kOk;
}

#if defined(__x86_64__) || defined(__i386__)
static bool cpu_has_bf16() { return __builtin_cpu_init(), __builtin_cpu_supports("avx512bf16"); }
static bool cpu_has_vnni() { return __builtin_cpu_init(), __builtin_cpu_supports("avx512vnni"); }
static bool cpu_is_amd() { return __builtin_cpu_init(), __builtin_cpu_is("amd"); }
// AMX-BF16, AMX-TILE and AMX-INT8 (CPUID leaf 7, EDX bits 22, 24 and 25), and Linux's leave to use the tile
// state: a process asks for it once (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 18).
static bool cpu_has_amx() {
  static const bool ok = [] {
#if defined(__linux__) && defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 22) & 1) || !((d >> 24) & 1) || !((d >> 25) & 1))
      return false;
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
    return false;
#endif
  }();
  return ok;
}
#else
static bool cpu_has_amx() { return false; }
static bool cpu_has_bf16() { return false; }
static bool cpu_has_vnni() { return false; }
static bool cpu_is_amd() { return false; }
#endif

static OptionalPath g_bf16_dot{"PYQUANT_BF16_DOT", "bf16 dot", "AVX512-BF16", cpu_has_bf16};
// The prefill GEMM on bf16 dot products: 1.8-2.1x the fp32 GEMM on Zen 4, 0.70-0.78x on an Intel
// Xeon with AMX (bench/RESULTS.md, twenty-third session), so by default on AMD CPUs only.
static OptionalPath g_bf16_gemm{"PYQUANT_BF16_GEMM", "bf16 gemm", "AVX512-BF16", cpu_has_bf16, cpu_is_amd};
static OptionalPath g_vnni{"PYQUANT_VNNI", "vnni", "AVX512-VNNI", cpu_has_vnni};
static OptionalPath g_amx{"PYQUANT_AMX", "amx", "AMX-BF16 and AMX-INT8", cpu_has_amx};

bool bf16_dot() { return path_on(g_bf16_dot); }
Status set_cpu_bf16_dot(const char* mode) { return set_path(g_bf16_dot, mode); }
const char* cpu_bf16_dot() { return bf16_dot() ? "on" : "off"; }

bool bf16_gemm() { return bf16_dot() && path_on(g_bf16_gemm); }
Status set_cpu_bf16_gemm(const char* mode) { return set_path(g_bf16_gemm, mode); }
const char* cpu_bf16_gemm() { return bf16_gemm() ? "on" : "off"; }

// Zen 4 (subnormal codes): the decode kernels beat the GEMM up to 24-32 rows at 4096 x 4096. An
// Intel Xeon (convert codes): the GEMM beat them from 13 rows, fp32 x, INT4 1.06-1.09x at 13,
// 1.20x at 16, 1.42x at 24; INT8 0.95x at 13, 1.05x at 16, 1.26x at 24 (bench/RESULTS.md,
// twenty-third session).
int64_t wide_decode_rows() {
  static const int64_t rows = cpu_is_amd() ? 24 : 12;
  return rows;
}

bool vnni_dot() { return path_on(g_vnni); }
Status set_cpu_vnni(const char* mode) { return set_path(g_vnni, mode); }
const char* cpu_vnni() { return vnni_dot() ? "on" : "off"; }

bool amx() { return path_on(g_amx); }
Status set_cpu_amx(const char* mode) { return set_path(g_amx, mode); }
const char* cpu_amx() { return amx() ? "on" : "off"; }

const char* cpu_isa() {
  switch (active_isa()) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace pyquant
