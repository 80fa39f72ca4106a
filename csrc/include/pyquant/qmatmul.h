// pyquant embeddable C++ API: qmatmul entry points.
#pragma once
#include "pyquant/common.h"
