// pyquant embeddable C++ API (umbrella header). CPU: link pyquant_cpu. CUDA: pyquant_cuda.
#pragma once
#include "pyquant/common.h"
#include "pyquant/qmatmul.h"
#include "pyquant/stream.h"
#ifdef PYQUANT_WITH_CUDA
#include "pyquant/cuda_api.h"
#include "pyquant/qmatmul_cuda.h"
#include "pyquant/stream_cuda.h"
#endif
