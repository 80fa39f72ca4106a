// Internal to csrc/cpu: the validated arguments of one qmatmul call, and the per-ISA entry
// points (each compiled from qmatmul_kernels.h with its own vector traits and flags).
#pragma once
#include <cstdint>

#include "pyquant/common.h"

namespace pyquant {

struct QmmArgs {
  const void* x; DType xdt; int64_t M, K, ldx;
  const void* qw; const void* scales; DType sdt; const uint8_t* zeros;
  const void* bias; int bits, group; int64_t N;
  void* y; int64_t ldy; int nthreads;
  DType ydt;     // y's and bias's dtype: x's, except where an -a8 call runs on its fp32 copy q * s
  int act_bits;  // 0, or 8: x is quantized to int8 first (qmatmul_a8.h)
};

namespace isa_scalar { void qmatmul_run(const QmmArgs& a); }
namespace isa_avx2 { void qmatmul_run(const QmmArgs& a); }
namespace isa_avx512 { void qmatmul_run(const QmmArgs& a); }

}  // namespace pyquant
