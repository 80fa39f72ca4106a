// pyquant embeddable C++ API: qmatmul_cuda entry points (link pyquant_cuda; needs a CUDA device).
#pragma once
#include <cstdint>

#include "pyquant/common.h"

namespace pyquant {
namespace cuda {

// Largest M the decode (GEMV) kernel handles in one pass. Larger M is processed in slices of
// this many rows, each re-reading the weights: correct, but meant for decode, not prefill.
constexpr int64_t kQMatmulMaxDecodeM = 8;

// y[M, N] = x[M, K] @ dequantize(W)^T (+ bias), fp32 accumulation, y in x's dtype.
// Weight formats exactly as in pyquant/formats.py:
//   bits == 8: qweight int8 [N, K] (row stride ldq), scales [N] contiguous (per output channel), zeros null,
//              group_size ignored.
//   bits == 4: qweight uint8 [N, K_pad / 2] with K_pad = ceil(K / G) * G, two codes per byte,
//              low nibble first; scales [N, ceil(K / G)] (row stride lds); zeros uint8 [N, ceil(K/G)]
//              (row stride ldz) or null for the symmetric format (implicit zero-point 8);
//              group_size G in {32, 64, 128, 256}. K need not be a multiple of G (ragged last group):
//              x is never read past K.
// x_dtype: F32, F16 or BF16; y and bias (length N, contiguous, may be null) have x's dtype.
// scale_dtype: F32 or F16. All strides are in elements; the last dimension of every array has
// unit stride. Every pointer is device memory on CUDA device `device`; the kernel is launched on
// `device` (the calling thread's current device is restored) and on `stream` (a cudaStream_t,
// null = the legacy default stream). Asynchronous: returns after the launch.
// Returns kOk, kInvalidArgument / kUnsupported (bad shapes, dtypes, group size; message in
// last_error()), or kCudaError (launch failure, no device).
Status qmatmul(const void* x, DType x_dtype, int64_t M, int64_t K, int64_t ldx,
               const void* qweight, int64_t N, int64_t ldq, int bits, int group_size,
               const void* scales, DType scale_dtype, int64_t lds,
               const uint8_t* zeros, int64_t ldz,
               const void* bias,
               void* y, int64_t ldy,
               int device, void* stream);

}  // namespace cuda
}  // namespace pyquant
