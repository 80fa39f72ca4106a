// pyquant embeddable C++ API: stream_cuda entry points.
#pragma once
#include "pyquant/common.h"
