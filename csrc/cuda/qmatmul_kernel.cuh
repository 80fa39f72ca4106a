// The decode GEMV kernel of csrc/cuda/qmatmul.cu, its parameter block, and the host-side
// validation and launch selection. Kept apart from the CUDA runtime calls so the same code can be
// compiled for the host by a warp simulator in the tests (tests/ops/test_qmatmul_gpu.py, which
// defines the few CUDA intrinsics it uses) and checked on machines without a GPU. Formats: pyquant/formats.py; argument contract: pyquant/qmatmul_cuda.h.
//
// One warp owns 1 to 4 output columns (rows of W; more at small M, so each x value loaded serves
// several rows) and streams them once for all M rows of x: each lane loads 16 packed bytes of a
// row at a time (one 128-bit load when rows are 16-byte aligned, else 16 byte loads), dequantizes
// in registers, accumulates in fp32, and the warp reduces with shuffles.
// INT4: a 16-byte chunk holds codes [32c, 32c + 32); every group size is a multiple of 32, so a
//   chunk lies inside one group: one scale and zero-point per chunk, applied to the chunk's partial
//   sums. Chunks are read only while 32c < K, and K_pad >= 32 * ceil(K / 32), so loads stay inside
//   the row; x is masked past K (the ragged last group), so padding codes contribute nothing.
// INT8: full 16-byte chunks over [0, 16 * floor(K / 16)), then the K % 16 tail one code per lane;
//   the per-channel scale multiplies the reduced sum once.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>

#include "pyquant/qmatmul_cuda.h"

namespace pyquant {
namespace cuda {
namespace qgemv {

constexpr int kWarpsPerBlock = 4;
constexpr int kThreads = 32 * kWarpsPerBlock;

struct Params {
  const void* x;
  int64_t M, K, ldx;
  const uint8_t* qw;  // int8 or uint8 codes: row stride ldq in bytes
  int64_t N, ldq;
  int group_shift;  // log2(group size) for int4
  const void* scales;
  bool scales_f16;
  int64_t lds;
  const uint8_t* zeros;  // null: symmetric (zero-point 8)
  int64_t ldz;
  const void* bias;  // x's dtype, or null
  void* y;
  int64_t ldy;
  bool w_vec;  // rows of qw are 16-byte aligned: 128-bit loads
  bool x_vec;  // rows of x are 16-byte aligned: vector loads of x
};

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// A 16-bit float's bits (the element at the lower address is the low half of a word) -> fp32.
template <typename T>
__device__ __forceinline__ float bits16_to_f32(uint32_t b);
template <>
__device__ __forceinline__ float bits16_to_f32<__half>(uint32_t b) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(b & 0xFFFFu)));
}
template <>
__device__ __forceinline__ float bits16_to_f32<__nv_bfloat16>(uint32_t b) { return __uint_as_float((b & 0xFFFFu) << 16); }

// 16 bytes at p: one 128-bit load when `aligned`, else 16 byte loads (the same value).
__device__ __forceinline__ uint4 load16(const uint8_t* __restrict__ p, bool aligned) {
  if (aligned) return __ldg(reinterpret_cast<const uint4*>(p));
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    w[i] = uint32_t(p[4 * i]) | (uint32_t(p[4 * i + 1]) << 8) | (uint32_t(p[4 * i + 2]) << 16) |
           (uint32_t(p[4 * i + 3]) << 24);
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// NE consecutive x values row[k .. k + NE) as fp32, zero past K. `vec`: row is 16-byte aligned
// (k is a multiple of NE, so the vector loads below are aligned too).
template <typename T, int NE>
__device__ __forceinline__ void load_x(const T* __restrict__ row, int64_t k, int64_t K, bool vec, float (&out)[NE]) {
  static_assert(NE == 4 || NE == 8, "NE is 4 or 8");
  if (vec && k + NE <= K) {
    if constexpr (sizeof(T) == 4) {
#pragma unroll
      for (int i = 0; i < NE; i += 4) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(row + k + i));
        out[i] = v.x; out[i + 1] = v.y; out[i + 2] = v.z; out[i + 3] = v.w;
      }
    } else if constexpr (NE == 8) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(row + k));
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        out[2 * i] = bits16_to_f32<T>(w[i]);
        out[2 * i + 1] = bits16_to_f32<T>(w[i] >> 16);
      }
    } else {
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(row + k));
      out[0] = bits16_to_f32<T>(v.x); out[1] = bits16_to_f32<T>(v.x >> 16);
      out[2] = bits16_to_f32<T>(v.y); out[3] = bits16_to_f32<T>(v.y >> 16);
    }
  } else {
#pragma unroll
    for (int i = 0; i < NE; ++i) out[i] = (k + i < K) ? to_f32(row[k + i]) : 0.f;
  }
}

__device__ __forceinline__ float load_scale(const Params& p, int64_t idx) {
  return p.scales_f16 ? __half2float(static_cast<const __half*>(p.scales)[idx]) : static_cast<const float*>(p.scales)[idx];
}

// acc[m][j] += sum_i x[m][k + i] * wf[j][i] for the M (<= MT) activation rows: NE dequantized
// codes of each of the warp's NC weight rows against the matching NE values of each x row.
template <int MT, int NC, int NE, typename T>
__device__ __forceinline__ void fma_codes(const T* __restrict__ x, const Params& p, int64_t M, int64_t k,
                                          const float (&wf)[NC][NE], float (&acc)[MT][NC]) {
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (m < M) {
      float xv[NE];
      load_x<T, NE>(x + m * p.ldx, k, p.K, p.x_vec, xv);
#pragma unroll
      for (int j = 0; j < NC; ++j)
#pragma unroll
        for (int i = 0; i < NE; ++i) acc[m][j] = fmaf(xv[i], wf[j][i], acc[m][j]);
    }
  }
}

// Output columns per warp: each x value loaded is reused for NC weight rows (fewer x loads per
// weight byte); fewer columns at large M keep the accumulators in registers.
template <int MT>
constexpr int kColsPerWarp = MT <= 2 ? 4 : (MT <= 4 ? 2 : 1);

template <int MT, int BITS, typename T>
__global__ void __launch_bounds__(kThreads) qgemv_kernel(const Params p) {
  constexpr int NC = kColsPerWarp<MT>;
  const int lane = threadIdx.x & 31;
  const int64_t n0 = (int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5)) * NC;
  if (n0 >= p.N) return;  // uniform across the warp: the shuffles below see full warps only
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const int64_t M = p.M;  // 1 <= M <= MT
  int64_t rows[NC];       // this warp's weight rows; past N, repeat the last one (never written)
  const uint8_t* __restrict__ wrow[NC];
#pragma unroll
  for (int j = 0; j < NC; ++j) {
    rows[j] = (n0 + j < p.N) ? n0 + j : p.N - 1;
    wrow[j] = p.qw + rows[j] * p.ldq;
  }

  float acc[MT][NC];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < NC; ++j) acc[m][j] = 0.f;

  if constexpr (BITS == 4) {
    const int64_t nchunks = (p.K + 31) / 32;
#pragma unroll 2
    for (int64_t c = lane; c < nchunks; c += 32) {
      const int64_t k0 = c * 32;
      const int64_t g = k0 >> p.group_shift;
      float s[NC], z[NC];
      uint32_t words[NC][4];
#pragma unroll
      for (int j = 0; j < NC; ++j) {
        s[j] = load_scale(p, rows[j] * p.lds + g);
        z[j] = p.zeros ? float(p.zeros[rows[j] * p.ldz + g]) : 8.f;
        const uint4 v = load16(wrow[j] + c * 16, p.w_vec);
        words[j][0] = v.x; words[j][1] = v.y; words[j][2] = v.z; words[j][3] = v.w;
      }
      float part[MT][NC];
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int j = 0; j < NC; ++j) part[m][j] = 0.f;
#pragma unroll
      for (int wi = 0; wi < 4; ++wi) {
        const int64_t k = k0 + 8 * wi;
        float wf[NC][8];  // code i of a word is nibble i (low nibble first = lower k first)
#pragma unroll
        for (int j = 0; j < NC; ++j)
#pragma unroll
          for (int i = 0; i < 8; ++i) wf[j][i] = float((words[j][wi] >> (4 * i)) & 0xFu) - z[j];
        fma_codes<MT, NC, 8>(x, p, M, k, wf, part);
      }
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int j = 0; j < NC; ++j) acc[m][j] = fmaf(part[m][j], s[j], acc[m][j]);
    }
  } else {
    const int64_t nfull = p.K / 16;
#pragma unroll 2
    for (int64_t c = lane; c < nfull; c += 32) {
      const int64_t k0 = c * 16;
      uint32_t words[NC][4];
#pragma unroll
      for (int j = 0; j < NC; ++j) {
        const uint4 v = load16(wrow[j] + k0, p.w_vec);
        words[j][0] = v.x; words[j][1] = v.y; words[j][2] = v.z; words[j][3] = v.w;
      }
#pragma unroll
      for (int wi = 0; wi < 4; ++wi) {
        const int64_t k = k0 + 4 * wi;
        float wf[NC][4];  // byte i of a word is code i
#pragma unroll
        for (int j = 0; j < NC; ++j)
#pragma unroll
          for (int i = 0; i < 4; ++i)
            wf[j][i] = float(static_cast<int8_t>(static_cast<uint8_t>(words[j][wi] >> (8 * i))));
        fma_codes<MT, NC, 4>(x, p, M, k, wf, acc);
      }
    }
    const int64_t kt = nfull * 16 + lane;  // the K % 16 tail, one code per lane
    if (kt < p.K) {
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (m < M) {
          const float xv = to_f32(x[m * p.ldx + kt]);
#pragma unroll
          for (int j = 0; j < NC; ++j) acc[m][j] = fmaf(xv, float(static_cast<int8_t>(wrow[j][kt])), acc[m][j]);
        }
      }
    }
  }

#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < NC; ++j)
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[m][j] += __shfl_xor_sync(0xffffffffu, acc[m][j], off);
  if (lane == 0) {
    T* y = static_cast<T*>(p.y);
#pragma unroll
    for (int j = 0; j < NC; ++j) {
      if (n0 + j < p.N) {
        const int64_t n = n0 + j;
        const float sn = (BITS == 8) ? load_scale(p, n) : 1.f;
        const float b = p.bias ? to_f32(static_cast<const T*>(p.bias)[n]) : 0.f;
#pragma unroll
        for (int m = 0; m < MT; ++m)
          if (m < M) y[m * p.ldy + n] = from_f32<T>(acc[m][j] * sn + b);
      }
    }
  }
}

inline size_t dtype_size(DType d) { return d == DType::F32 ? 4 : 2; }

inline bool aligned16(const void* ptr, int64_t row_bytes) {
  return (reinterpret_cast<uintptr_t>(ptr) % 16 == 0) && (row_bytes % 16 == 0);
}

// Validate the arguments of pyquant::cuda::qmatmul and fill p (all but x, y, M, which the launch
// loop sets per slice). Returns kOk, or an error code with its message in `err`.
inline Status make_params(DType x_dtype, int64_t M, int64_t K, int64_t ldx, const void* x,
                          const void* qweight, int64_t N, int64_t ldq, int bits, int group_size,
                          const void* scales, DType scale_dtype, int64_t lds, const uint8_t* zeros, int64_t ldz,
                          const void* bias, const void* y, int64_t ldy, Params& p, std::string& err) {
  if (x_dtype != DType::F32 && x_dtype != DType::F16 && x_dtype != DType::BF16)
    return err = "x must be float32, float16 or bfloat16", kUnsupported;
  if (scale_dtype != DType::F32 && scale_dtype != DType::F16)
    return err = "scales must be float32 or float16", kUnsupported;
  if (bits != 4 && bits != 8) return err = "bits must be 4 or 8, got " + std::to_string(bits), kUnsupported;
  if (bits == 4 && group_size != 32 && group_size != 64 && group_size != 128 && group_size != 256)
    return err = "unsupported int4 group size " + std::to_string(group_size) + " (use 32, 64, 128 or 256)", kUnsupported;
  if (M < 0 || N < 0 || K < 0) return err = "negative shape", kInvalidArgument;
  const int64_t ngroups = bits == 4 ? (K + group_size - 1) / group_size : 1;
  const int64_t row_bytes = bits == 4 ? ngroups * group_size / 2 : K;
  if (ldx < K) return err = "ldx < K", kInvalidArgument;
  if (ldq < row_bytes) return err = "ldq is smaller than a packed weight row", kInvalidArgument;
  if (bits == 4 && lds < ngroups) return err = "lds < number of groups", kInvalidArgument;
  if (zeros && bits == 8) return err = "int8 is symmetric: zeros must be null", kInvalidArgument;
  if (zeros && ldz < ngroups) return err = "ldz < number of groups", kInvalidArgument;
  if (ldy < N) return err = "ldy < N", kInvalidArgument;
  if (M > 0 && N > 0 && (!x || !qweight || !scales || !y)) return err = "null pointer", kInvalidArgument;
  p = Params{};
  p.K = K; p.ldx = ldx;
  p.qw = static_cast<const uint8_t*>(qweight); p.N = N; p.ldq = ldq;
  p.group_shift = bits == 4 ? __builtin_ctz(static_cast<unsigned>(group_size)) : 0;
  p.scales = scales; p.scales_f16 = scale_dtype == DType::F16; p.lds = bits == 4 ? lds : 1;
  p.zeros = zeros; p.ldz = ldz;
  p.bias = bias;
  p.ldy = ldy;
  p.w_vec = aligned16(qweight, ldq);
  p.x_vec = aligned16(x, ldx * static_cast<int64_t>(dtype_size(x_dtype)));
  return kOk;
}

// Blocks of kThreads threads that cover N columns with NC columns per warp.
template <int MT>
int64_t grid_blocks(int64_t N) {
  const int64_t per_block = int64_t(kWarpsPerBlock) * kColsPerWarp<MT>;
  return (N + per_block - 1) / per_block;
}

template <int BITS, typename T, class Launch>
void launch_m(const Params& p, Launch&& launch) {
  if (p.M <= 1) launch(&qgemv_kernel<1, BITS, T>, grid_blocks<1>(p.N), p);
  else if (p.M <= 2) launch(&qgemv_kernel<2, BITS, T>, grid_blocks<2>(p.N), p);
  else if (p.M <= 4) launch(&qgemv_kernel<4, BITS, T>, grid_blocks<4>(p.N), p);
  else launch(&qgemv_kernel<8, BITS, T>, grid_blocks<8>(p.N), p);
}

// Call launch(kernel, blocks, p) once per slice of at most kQMatmulMaxDecodeM rows of x (each
// slice re-reads the weights), with the kernel instance for the slice's M, bits and x dtype; the
// launch is gridDim.x = blocks, blockDim.x = kThreads.
template <class Launch>
void for_each_launch(Params p, DType x_dtype, int bits, const void* x, void* y, int64_t M, Launch&& launch) {
  const size_t es = dtype_size(x_dtype);
  for (int64_t m0 = 0; m0 < M; m0 += kQMatmulMaxDecodeM) {
    p.M = (M - m0 < kQMatmulMaxDecodeM) ? (M - m0) : kQMatmulMaxDecodeM;
    p.x = static_cast<const char*>(x) + m0 * p.ldx * es;
    p.y = static_cast<char*>(y) + m0 * p.ldy * es;
    if (x_dtype == DType::F32) {
      if (bits == 4) launch_m<4, float>(p, launch); else launch_m<8, float>(p, launch);
    } else if (x_dtype == DType::F16) {
      if (bits == 4) launch_m<4, __half>(p, launch); else launch_m<8, __half>(p, launch);
    } else {
      if (bits == 4) launch_m<4, __nv_bfloat16>(p, launch); else launch_m<8, __nv_bfloat16>(p, launch);
    }
  }
}

}  // namespace qgemv
}  // namespace cuda
}  // namespace pyquant
