// qmatmul_cpu: argument checks, ISA dispatch (pyquant::active_isa()), and the portable scalar
// kernels (the shared kernel code of qmatmul_kernels.h with one-lane "vectors").
#include "pyquant/qmatmul.h"

#include <cstdint>
#include <cstring>
#include <string>

#include "cpu_dispatch.h"
#include "qmatmul_impl.h"

namespace pyquant {
namespace isa_scalar {

struct V {
  using F = float;
  using I = uint32_t;
  static constexpr int W = 1;
  static constexpr bool kAmx = false;      // no AMX tiles at this level
  static constexpr bool kBf16Dot = false;  // no bf16 dot products at this level
  static constexpr bool kI8Dot = false;    // the -a8 tile runs its scalar loop
  static constexpr bool kVnni = false;
  static F zero() { return 0.f; }
  static F set1(float a) { return a; }
  static F load(const float* p) { return *p; }
  static void store(float* p, F v) { *p = v; }
  static F add(F a, F b) { return a + b; }
  static F fma(F a, F b, F c) { return a * b + c; }
  static float hsum(F v) { return v; }
  static I loadi(const uint8_t* p) {  // little-endian: byte 0 in the low bits
    return static_cast<I>(p[0]) | static_cast<I>(p[1]) << 8 | static_cast<I>(p[2]) << 16 | static_cast<I>(p[3]) << 24;
  }
  static I band(I v, uint32_t mask) { return v & mask; }
  static F cvt(I v) { return static_cast<float>(static_cast<int32_t>(v)); }
  template <int N>
  static I srl(I v) { return v >> N; }
  static F asf(I v) { F f; std::memcpy(&f, &v, 4); return f; }
  static I flip_bytes(I v) { return v ^ 0x80808080u; }
  static void gather16(const uint8_t* p, int64_t, I out[4]) {  // one row: its 4 quads
    for (int j = 0; j < 4; ++j) out[j] = loadi(p + 4 * j);
  }
  static F load_i8(const int8_t* p) { return static_cast<float>(*p); }
  static F load_u8(const uint8_t* p) { return static_cast<float>(*p); }
  // (one lane: no partial vector, never called)
  static F load_head(const float* p, int) { return *p; }
  static F load_u8_head(const uint8_t* p, int) { return static_cast<float>(*p); }
  static F load_f16(const uint16_t* p);  // defined below, from the shared f16_to_f32
  static F scale_block(const float* s, int) { return s[0]; }
};

}  // namespace isa_scalar
}  // namespace pyquant

#define PQ_ISA_NS isa_scalar
#include "qmatmul_kernels.h"

namespace pyquant::isa_scalar {
inline float V::load_f16(const uint16_t* p) { return f16_to_f32(*p); }
}  // namespace pyquant::isa_scalar

namespace pyquant {

static Status fail(Status st, const std::string& msg) {
  set_last_error("qmatmul_cpu: " + msg);
  return st;
}

static bool is_float(DType d) { return d == DType::F32 || d == DType::BF16 || d == DType::F16; }

Status qmatmul_cpu(const void* x, DType x_dtype, int64_t M, int64_t K, int64_t ldx, const void* qweight,
                   const void* scales, DType scale_dtype, const uint8_t* zeros, const void* bias, int bits,
                   int group_size, int64_t N, void* y, int64_t ldy, int num_threads, int act_bits) {
  if (!is_float(x_dtype)) return fail(kUnsupported, "x dtype must be float32, bfloat16 or float16");
  if (scale_dtype != DType::F32 && scale_dtype != DType::F16)
    return fail(kUnsupported, "scale dtype must be float32 or float16");
  if (M < 0 || K <= 0 || N <= 0) return fail(kInvalidArgument, "need M >= 0, K > 0, N > 0");
  if (N >= (int64_t{1} << 34)) return fail(kInvalidArgument, "need N < 2^34 (the decode kernels' row tiles)");
  if (ldx < K) return fail(kInvalidArgument, "ldx must be >= K");
  if (ldy < N) return fail(kInvalidArgument, "ldy must be >= N");
  if (bits == 8) {
    if (zeros) return fail(kInvalidArgument, "int8 is symmetric: zeros must be null");
  } else if (bits == 4) {
    if (group_size != 32 && group_size != 64 && group_size != 128 && group_size != 256)
      return fail(kUnsupported, "unsupported int4 group size " + std::to_string(group_size) + " (use 32, 64, 128 or 256)");
  } else {
    return fail(kUnsupported, "unsupported bit width " + std::to_string(bits) + " (use 8 or 4)");
  }
  if (act_bits != 0 && act_bits != 8)
    return fail(kUnsupported, "unsupported activation bits " + std::to_string(act_bits) + " (use 0 or 8)");
  if (M == 0) return kOk;
  if (!x || !qweight || !scales || !y) return fail(kInvalidArgument, "null x, qweight, scales or y");
  QmmArgs a{x, x_dtype, M, K, ldx, qweight, scales, scale_dtype, zeros, bias, bits, bits == 4 ? group_size : 0,
            N, y, ldy, num_threads, x_dtype, act_bits};
  switch (active_isa()) {
    case Isa::Avx512: isa_avx512::qmatmul_run(a); break;
    case Isa::Avx2: isa_avx2::qmatmul_run(a); break;
    default: isa_scalar::qmatmul_run(a); break;
  }
  return kOk;
}

}  // namespace pyquant
