// Bindings for the qmatmul CUDA kernels (compiled only with PYQUANT_WITH_CUDA; a no-op otherwise).
#include "bind_common.h"

#ifdef PYQUANT_WITH_CUDA
#include "pyquant/qmatmul_cuda.h"

namespace {

using pyquant::DType;

void expect_cuda(const pqbind::ArrayView& v, const char* name, int device_id) {
  if (v.device != pqbind::kCUDA)
    throw py::value_error(std::string(name) + ": must be a CUDA array (DLPack device type " + std::to_string(v.device) + ")");
  if (v.device_id != device_id)
    throw py::value_error(std::string(name) + ": is on CUDA device " + std::to_string(v.device_id) + " but x is on " +
                          std::to_string(device_id));
}

void expect_unit_last_stride(const pqbind::ArrayView& v, const char* name) {
  if (v.ndim() >= 1 && v.shape.back() > 1 && v.strides.back() != 1)
    throw py::value_error(std::string(name) + ": its last dimension must have unit stride");
}

int64_t row_stride(const pqbind::ArrayView& v) { return v.ndim() == 2 && v.shape[0] > 1 ? v.strides[0] : v.dim(-1); }

// y[M, N] = x[M, K] @ dequantize(W)^T (+ bias) into the preallocated y (x's dtype), on `stream`.
void qmatmul_cuda(py::object x_obj, py::object qw_obj, py::object s_obj, py::object z_obj, py::object b_obj,
                  py::object y_obj, int bits, int group_size, int64_t in_features, int64_t stream) {
  auto x = pqbind::as_array(x_obj, "x");
  auto qw = pqbind::as_array(qw_obj, "qweight");
  auto sc = pqbind::as_array(s_obj, "scales");
  auto y = pqbind::as_array(y_obj, "y");
  pqbind::ArrayView z, b;
  const bool has_z = !z_obj.is_none(), has_b = !b_obj.is_none();
  if (has_z) z = pqbind::as_array(z_obj, "zeros");
  if (has_b) b = pqbind::as_array(b_obj, "bias");

  pqbind::expect_ndim(x, "x", 2);
  pqbind::expect_ndim(y, "y", 2);
  pqbind::expect_ndim(qw, "qweight", 2);
  pqbind::expect_dtype(x, "x", {DType::F32, DType::F16, DType::BF16});
  pqbind::expect_dtype(y, "y", {x.dtype});
  pqbind::expect_dtype(qw, "qweight", {bits == 8 ? DType::I8 : DType::U8});
  pqbind::expect_dtype(sc, "scales", {DType::F32, DType::F16});
  const int dev = x.device_id;
  expect_cuda(x, "x", dev);
  expect_cuda(qw, "qweight", dev);
  expect_cuda(sc, "scales", dev);
  expect_cuda(y, "y", dev);
  const int64_t M = x.dim(0), K = x.dim(1), N = qw.dim(0);
  if (K != in_features)
    throw py::value_error("x: last dimension " + std::to_string(K) + " != in_features " + std::to_string(in_features));
  if (y.dim(0) != M || y.dim(1) != N) throw py::value_error("y: must have shape [M, N]");
  for (const auto* v : {&x, &qw, &y}) expect_unit_last_stride(*v, "x, qweight and y");
  if (bits == 8) {
    pqbind::expect_ndim(sc, "scales", 1);
    if (sc.dim(0) != N) throw py::value_error("scales: int8 scales must have shape [N]");
    pqbind::expect_contiguous(sc, "scales");
  } else {
    pqbind::expect_ndim(sc, "scales", 2);
    expect_unit_last_stride(sc, "scales");
    if (sc.dim(0) != N) throw py::value_error("scales: must have N rows");
  }
  if (has_z) {
    pqbind::expect_ndim(z, "zeros", 2);
    pqbind::expect_dtype(z, "zeros", {DType::U8});
    expect_cuda(z, "zeros", dev);
    expect_unit_last_stride(z, "zeros");
    if (z.dim(0) != N || z.dim(1) != sc.dim(1)) throw py::value_error("zeros: must have the shape of scales");
  }
  if (has_b) {
    pqbind::expect_ndim(b, "bias", 1);
    pqbind::expect_dtype(b, "bias", {x.dtype});
    expect_cuda(b, "bias", dev);
    pqbind::expect_contiguous(b, "bias");
    if (b.dim(0) != N) throw py::value_error("bias: must have shape [N]");
  }
  if (bits == 4 && group_size > 0) {
    const int64_t ng = (K + group_size - 1) / group_size;
    if (sc.dim(1) != ng) throw py::value_error("scales: must have ceil(K / group_size) columns");
    if (qw.dim(1) != ng * group_size / 2) throw py::value_error("qweight: must have ceil(K / G) * G / 2 columns");
  } else if (bits == 8 && qw.dim(1) != K) {
    throw py::value_error("qweight: int8 qweight must have K columns");
  }

  pyquant::Status st;
  {
    py::gil_scoped_release nogil;
    st = pyquant::cuda::qmatmul(x.data, x.dtype, M, K, row_stride(x), qw.data, N, row_stride(qw), bits, group_size,
                                sc.data, sc.dtype, bits == 4 ? row_stride(sc) : 1,
                                has_z ? static_cast<const uint8_t*>(z.data) : nullptr, has_z ? row_stride(z) : 0,
                                has_b ? b.data : nullptr, y.data, row_stride(y), dev,
                                reinterpret_cast<void*>(static_cast<intptr_t>(stream)));
  }
  pqbind::check_status(st);
}

}  // namespace

void pq_bind_qmatmul_cuda(py::module_& m) {
  m.def("qmatmul_cuda", &qmatmul_cuda, py::arg("x"), py::arg("qweight"), py::arg("scales"), py::arg("zeros"),
        py::arg("bias"), py::arg("y"), py::arg("bits"), py::arg("group_size"), py::arg("in_features"),
        py::arg("stream"),
        "y[M, N] = x[M, K] @ dequantize(W)^T (+ bias) on CUDA, written into y (x's dtype); stream: a cudaStream_t as int. "
        "Decode kernel (M <= 8 per pass; larger M is processed in slices of 8 rows).");
}

#else

void pq_bind_qmatmul_cuda(py::module_& m) { (void)m; }

#endif
