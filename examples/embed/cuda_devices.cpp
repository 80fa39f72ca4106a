// Links pyquant::cuda (which defines PYQUANT_WITH_CUDA, so pyquant.h declares the CUDA API) and
// prints how many CUDA devices the statically linked runtime sees.
#include <pyquant/pyquant.h>

#include <cstdio>

int main() {
  std::printf("pyquant CUDA library linked: %d CUDA device(s) visible\n", pyquant::cuda::device_count());
  return 0;
}
