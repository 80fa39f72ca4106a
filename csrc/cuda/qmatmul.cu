// pyquant::cuda::qmatmul: launches the decode GEMV kernel of qmatmul_kernel.cuh on a stream.
// API and argument contract: pyquant/qmatmul_cuda.h.
#include <cuda_runtime.h>

#include <string>

#include "pyquant/qmatmul_cuda.h"
#include "qmatmul_kernel.cuh"

namespace pyquant {

void set_last_error(const std::string& msg);  // csrc/cpu/cpu_features.cpp

namespace cuda {
namespace {

Status fail(Status code, const std::string& msg) {
  set_last_error("qmatmul[cuda]: " + msg);
  return code;
}

}  // namespace

Status qmatmul(const void* x, DType x_dtype, int64_t M, int64_t K, int64_t ldx,
               const void* qweight, int64_t N, int64_t ldq, int bits, int group_size,
               const void* scales, DType scale_dtype, int64_t lds,
               const uint8_t* zeros, int64_t ldz,
               const void* bias,
               void* y, int64_t ldy,
               int device, void* stream) {
  qgemv::Params p;
  std::string err;
  const Status st = qgemv::make_params(x_dtype, M, K, ldx, x, qweight, N, ldq, bits, group_size, scales, scale_dtype,
                                       lds, zeros, ldz, bias, y, ldy, p, err);
  if (st != kOk) return fail(st, err);
  if (M == 0 || N == 0) return kOk;

  int prev = -1;
  cudaError_t e = cudaGetDevice(&prev);
  if (e == cudaSuccess && prev != device) e = cudaSetDevice(device);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return fail(kCudaError, "cannot use CUDA device " + std::to_string(device) + ": " + cudaGetErrorString(e));
  }
  const auto s = static_cast<cudaStream_t>(stream);
  qgemv::for_each_launch(p, x_dtype, bits, x, y, M, [&](auto kernel, int64_t blocks, const qgemv::Params& q) {
    kernel<<<dim3(static_cast<unsigned>(blocks)), qgemv::kThreads, 0, s>>>(q);
  });
  e = cudaGetLastError();
  if (prev >= 0 && prev != device) cudaSetDevice(prev);
  if (e != cudaSuccess) return fail(kCudaError, std::string("kernel launch failed: ") + cudaGetErrorString(e));
  return kOk;
}

}  // namespace cuda
}  // namespace pyquant
