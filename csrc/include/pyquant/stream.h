// pyquant embeddable C++ API: stream entry points.
#pragma once
#include "pyquant/common.h"
