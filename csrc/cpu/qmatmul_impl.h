// Internal to csrc/cpu: the validated arguments of one qmatmul call, and the per-ISA entry
// points (each compiled from qmatmul_kernels.h with its own vector traits and flags).
#pragma once
#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

#include "pyquant/common.h"

namespace pyquant {

// std::allocator with 64-byte (cache-line) alignment, for the kernels' scratch (permuted x, packed
// panels), read with full-width vector loads. malloc aligns to 16 bytes only, so whether a 64-byte
// load split a cache line depended on the heap's history: the INT4 decode kernel with its x
// 16 bytes off a line ran 0.92-0.95x (AVX-512, Zen 4, bench/RESULTS.md, fourteenth session).
template <class T>
struct CacheAligned {
  using value_type = T;
  CacheAligned() = default;
  template <class U>
  CacheAligned(const CacheAligned<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64})); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t{64}); }
  template <class U>
  bool operator==(const CacheAligned<U>&) const { return true; }
  template <class U>
  bool operator!=(const CacheAligned<U>&) const { return false; }
};
template <class T>
using AlignedVec = std::vector<T, CacheAligned<T>>;

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
