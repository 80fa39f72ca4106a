// CUDA runtime helpers shared by the CUDA kernels.
#include <cuda_runtime.h>

#include "pyquant/cuda_api.h"

namespace pyquant {
namespace cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

}  // namespace cuda
}  // namespace pyquant
