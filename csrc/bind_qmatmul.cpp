// Bindings for the qmatmul kernels (placeholder until the kernels land).
#include "bind_common.h"

void pq_bind_qmatmul(py::module_& m) { (void)m; }
