// pyquant embeddable C++ API: CUDA entry points (declared only when built with CUDA).
#pragma once
#include <cstdint>

#include "pyquant/common.h"

namespace pyquant {
namespace cuda {

// Number of CUDA devices the (statically linked) runtime sees; 0 without a driver/GPU.
int device_count();

}  // namespace cuda
}  // namespace pyquant
