// Bindings for the stream kernels (placeholder until the kernels land).
#include "bind_common.h"

void pq_bind_stream(py::module_& m) { (void)m; }
