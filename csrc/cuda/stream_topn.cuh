// Device helpers of the CUDA stream tile reducer (stream_topn.cu): packed top-N keys and
// block-wide reductions. Internal to csrc/cuda.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace pyquant {
namespace stream_cuda {

// A (logit, id) pair as one int64 whose order is the top-N order: larger logit first, and on
// equal logits the lower id first. High word: the float's bits made order-preserving as a signed
// int32 (flip the magnitude bits of negatives); low word: 2^31 - 1 - id (ids in [0, 2^31 - 1)).
// Keys are unique per row, so "the" maximum is always one element. kEmpty (an empty slot, id -1)
// is below every real key, a real -inf logit included.
constexpr long long kEmpty = (-9223372036854775807LL - 1);
constexpr long long kIdBias = 0x7FFFFFFFLL;

__device__ __forceinline__ long long make_key(float v, long long id) {
  int b = __float_as_int(v);
  if ((b & 0x7FFFFFFF) == 0) b = 0;  // -0.0 ties with +0.0 (then the lower id wins), integer-only
  const int s = b ^ ((b >> 31) & 0x7FFFFFFF);
  const unsigned long long hi = static_cast<unsigned long long>(static_cast<unsigned int>(s)) << 32;
  return static_cast<long long>(hi | static_cast<unsigned long long>(kIdBias - id));
}

__device__ __forceinline__ float key_value(long long key) {
  const int s = static_cast<int>(key >> 32);
  return __int_as_float(s ^ ((s >> 31) & 0x7FFFFFFF));
}

__device__ __forceinline__ long long key_id(long long key) { return kIdBias - (key & 0xFFFFFFFFLL); }

// Merge two (max, sum of exp(x - max)) pairs; an all -inf pair is (-inf, 0) and stays NaN-free.
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
  const float mm = fmaxf(m, m2);
  if (mm == -INFINITY) {
    m = mm;
    s = 0.f;
    return;
  }
  s = s * __expf(m - mm) + s2 * __expf(m2 - mm);
  m = mm;
}

__device__ __forceinline__ long long warp_max(long long v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const long long w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

__device__ __forceinline__ void warp_lse(float& m, float& s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
    const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
    lse_merge(m, s, m2, s2);
  }
}

// Block-wide max of one key per thread; every thread gets it. Two barriers: scratch and *out
// may be reused by the next call.
template <int kWarps>
__device__ __forceinline__ long long block_max_key(long long v, long long* scratch, long long* out) {
  v = warp_max(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    long long m = scratch[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) m = scratch[w] > m ? scratch[w] : m;
    *out = m;
  }
  __syncthreads();
  return *out;
}

}  // namespace stream_cuda
}  // namespace pyquant
