// pyquant embeddable C++ API: qmatmul_cuda entry points.
#pragma once
#include "pyquant/common.h"
