// Bindings for the CPU qmatmul kernel (csrc/include/pyquant/qmatmul.h): validate arrays, then
// run the kernel with the GIL released, writing into the caller's output array.
#include <string>

#include "bind_common.h"
#include "pyquant/qmatmul.h"

using pyquant::DType;

namespace {

void expect_shape(const pqbind::ArrayView& v, const char* name, std::initializer_list<int64_t> want) {
  std::vector<int64_t> w(want);
  if (v.shape != w) {
    std::string msg = std::string(name) + ": expected shape [";
    for (size_t i = 0; i < w.size(); ++i) msg += (i ? ", " : "") + std::to_string(w[i]);
    msg += "], got [";
    for (size_t i = 0; i < v.shape.size(); ++i) msg += (i ? ", " : "") + std::to_string(v.shape[i]);
    throw py::value_error(msg + "]");
  }
}

void expect_cpu(const pqbind::ArrayView& v, const char* name) {
  if (v.device != pqbind::kCPU) throw py::value_error(std::string(name) + ": must be on the CPU");
}

// Rows of a 2-D array must have a unit stride in the last dimension; returns the row stride.
int64_t row_stride(const pqbind::ArrayView& v, const char* name) {
  if (v.dim(1) > 1 && v.strides[1] != 1)
    throw py::value_error(std::string(name) + ": the last dimension must be contiguous (stride 1)");
  return v.dim(0) > 1 ? v.strides[0] : v.dim(1);
}

void qmatmul_cpu_py(py::object x_obj, py::object qw_obj, py::object s_obj, py::object z_obj, py::object b_obj,
                    int bits, int group_size, int64_t in_features, py::object y_obj, int num_threads) {
  auto x = pqbind::as_array(x_obj, "x");
  auto qw = pqbind::as_array(qw_obj, "qweight");
  auto sc = pqbind::as_array(s_obj, "scales");
  auto y = pqbind::as_array(y_obj, "y");
  for (auto* v : {&x, &qw, &sc, &y}) expect_cpu(*v, v == &x ? "x" : v == &qw ? "qweight" : v == &sc ? "scales" : "y");
  pqbind::expect_ndim(x, "x", 2);
  pqbind::expect_dtype(x, "x", {DType::F32, DType::BF16, DType::F16});
  const int64_t M = x.dim(0), K = x.dim(1);
  if (K != in_features)
    throw py::value_error("x: last dimension " + std::to_string(K) + " != in_features " + std::to_string(in_features));
  if (bits != 8 && bits != 4) throw py::value_error("unsupported bit width " + std::to_string(bits) + " (use 8 or 4)");
  if (bits == 4 && group_size != 32 && group_size != 64 && group_size != 128 && group_size != 256)
    throw py::value_error("unsupported int4 group size " + std::to_string(group_size) + " (use 32, 64, 128 or 256)");
  pqbind::expect_ndim(qw, "qweight", 2);
  const int64_t N = qw.dim(0);
  const int64_t ng = bits == 4 ? (K + group_size - 1) / group_size : 1;
  if (bits == 8) {
    pqbind::expect_dtype(qw, "qweight", {DType::I8});
    expect_shape(qw, "qweight", {N, K});
    expect_shape(sc, "scales", {N});
  } else {
    pqbind::expect_dtype(qw, "qweight", {DType::U8});
    expect_shape(qw, "qweight", {N, ng * group_size / 2});
    expect_shape(sc, "scales", {N, ng});
  }
  pqbind::expect_contiguous(qw, "qweight");
  pqbind::expect_dtype(sc, "scales", {DType::F32, DType::F16});
  pqbind::expect_contiguous(sc, "scales");
  const uint8_t* zeros = nullptr;
  pqbind::ArrayView z, b;
  if (!z_obj.is_none()) {
    if (bits == 8) throw py::value_error("zeros: int8 is symmetric and takes no zero-points");
    z = pqbind::as_array(z_obj, "zeros");
    expect_cpu(z, "zeros");
    pqbind::expect_dtype(z, "zeros", {DType::U8});
    expect_shape(z, "zeros", {N, ng});
    pqbind::expect_contiguous(z, "zeros");
    zeros = static_cast<const uint8_t*>(z.data);
  }
  const void* bias = nullptr;
  if (!b_obj.is_none()) {
    b = pqbind::as_array(b_obj, "bias");
    expect_cpu(b, "bias");
    pqbind::expect_dtype(b, "bias", {x.dtype});
    expect_shape(b, "bias", {N});
    pqbind::expect_contiguous(b, "bias");
    bias = b.data;
  }
  pqbind::expect_ndim(y, "y", 2);
  pqbind::expect_dtype(y, "y", {x.dtype});
  expect_shape(y, "y", {M, N});
  const int64_t ldx = row_stride(x, "x"), ldy = row_stride(y, "y");
  if (M > 1 && (ldx < K || ldy < N)) throw py::value_error("x, y: rows overlap (row stride smaller than a row)");
  int32_t st;
  {
    py::gil_scoped_release nogil;
    st = pyquant::qmatmul_cpu(x.data, x.dtype, M, K, std::max(ldx, K), qw.data, sc.data, sc.dtype, zeros, bias, bits,
                              group_size, N, y.data, std::max(ldy, N), num_threads);
  }
  pqbind::check_status(st);
}

}  // namespace

void pq_bind_qmatmul(py::module_& m) {
  m.def("qmatmul_cpu", &qmatmul_cpu_py, py::arg("x"), py::arg("qweight"), py::arg("scales"), py::arg("zeros"),
        py::arg("bias"), py::arg("bits"), py::arg("group_size"), py::arg("in_features"), py::arg("y"),
        py::arg("num_threads") = 0,
        "y[M, N] = x[M, K] @ dequantize(qweight, scales, zeros).T (+ bias), written into y (x's dtype; "
        "fp32 accumulation). Formats as in pyquant/formats.py. Raises ValueError on bad input.");
}
