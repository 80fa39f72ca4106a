// Bindings for the qmatmul CUDA kernels (compiled only with PYQUANT_WITH_CUDA).
#include "bind_common.h"

void pq_bind_qmatmul_cuda(py::module_& m) { (void)m; }
