// Bindings for the stream CUDA kernels (compiled only with PYQUANT_WITH_CUDA).
#include "bind_common.h"

void pq_bind_stream_cuda(py::module_& m) { (void)m; }
