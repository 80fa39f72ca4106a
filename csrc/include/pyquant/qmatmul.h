// pyquant embeddable C++ API: weight-only quantized matmul on the CPU.
//
//   y[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n]),   W = dequantize(qweight, scales, zeros)
//
// Formats (exactly those of pyquant/formats.py):
//   bits == 8: qweight int8 [N, K] row-major, scales [N] (per output channel, symmetric),
//              zeros must be null, group_size is ignored (pass 0).
//   bits == 4: group-wise along K, G = group_size in {32, 64, 128, 256}, ngroups = ceil(K / G),
//              Kp = ngroups * G; qweight uint8 [N, Kp / 2] row-major, two codes per byte,
//              low nibble first (byte j holds codes 2j and 2j+1); scales [N, ngroups];
//              zeros uint8 [N, ngroups] (asymmetric) or null (symmetric: zero-point 8).
//              w[n, k] = (code[n, k] - zero[n, k / G]) * scale[n, k / G]. A ragged last group
//              is padded in qweight; x is never read past K.
//   scales: fp32 or fp16 (scale_dtype). x, bias and y share x_dtype: fp32, bf16 or fp16.
//   x rows are ldx elements apart (ldx >= K), y rows ldy apart (ldy >= N); the last dimension
//   of each is contiguous. Accumulation is in fp32; the full-precision weight is never built
//   (dequantization happens in registers for M <= 8, or <= 24 when K >= 1024, else in a small
//   cache-resident panel; bf16 x on AVX512-BF16 goes to that panel, as bf16, from 13 rows for
//   INT4 and from 9 for INT8).
//   num_threads <= 0 uses the OpenMP default.
//   act_bits == 8 (the -a8 specs): each row of x is first quantized to int8, symmetric, with one
//   scale per block of G columns (INT4) or per row (INT8): s = max|x| / 127, q = clamp(
//   rint(x / s), -127, 127), x ~= q * s; INT4 with M <= 8 (<= 16 at K >= 1024) multiplies codes
//   and q as integers, and so do INT8 at any M and INT4 with more rows where the CPU has
//   AVX512-VNNI.
//   A row of x holding a NaN or an Inf gives a row of NaN.
// Returns kOk, or kInvalidArgument / kUnsupported with the reason in last_error().
#pragma once
#include <cstdint>

#include "pyquant/common.h"

namespace pyquant {

Status qmatmul_cpu(const void* x, DType x_dtype, int64_t M, int64_t K, int64_t ldx,
                   const void* qweight, const void* scales, DType scale_dtype,
                   const uint8_t* zeros, const void* bias, int bits, int group_size, int64_t N,
                   void* y, int64_t ldy, int num_threads, int act_bits = 0);

}  // namespace pyquant
