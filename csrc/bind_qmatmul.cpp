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

// A weight checked once and kept (borrowed, with its owners alive) for repeated calls: the
// per-call work is then x, bias and y only. Python's cpu backend caches one per QuantizedWeight.
struct CpuWeight {
  pqbind::ArrayView qw, sc, z;
  int bits = 0, group_size = 0;
  int64_t N = 0, K = 0;

  CpuWeight(py::object qw_obj, py::object s_obj, py::object z_obj, int bits_, int group_size_, int64_t in_features)
      : bits(bits_), group_size(group_size_), K(in_features) {
    if (bits != 8 && bits != 4) throw py::value_error("unsupported bit width " + std::to_string(bits) + " (use 8 or 4)");
    if (bits == 4 && group_size != 32 && group_size != 64 && group_size != 128 && group_size != 256)
      throw py::value_error("unsupported int4 group size " + std::to_string(group_size) + " (use 32, 64, 128 or 256)");
    if (K <= 0) throw py::value_error("in_features must be positive, got " + std::to_string(K));
    qw = pqbind::as_array(qw_obj, "qweight");
    sc = pqbind::as_array(s_obj, "scales");
    expect_cpu(qw, "qweight");
    expect_cpu(sc, "scales");
    pqbind::expect_ndim(qw, "qweight", 2);
    N = qw.dim(0);
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
    if (!z_obj.is_none()) {
      if (bits == 8) throw py::value_error("zeros: int8 is symmetric and takes no zero-points");
      z = pqbind::as_array(z_obj, "zeros");
      expect_cpu(z, "zeros");
      pqbind::expect_dtype(z, "zeros", {DType::U8});
      expect_shape(z, "zeros", {N, ng});
      pqbind::expect_contiguous(z, "zeros");
    }
  }

  // y[M, N] = x[M, K] @ W.T (+ bias), written into y.
  void matmul(py::object x_obj, py::object b_obj, py::object y_obj, int num_threads) const {
    auto x = pqbind::as_array(x_obj, "x");
    auto y = pqbind::as_array(y_obj, "y");
    expect_cpu(x, "x");
    expect_cpu(y, "y");
    pqbind::expect_ndim(x, "x", 2);
    pqbind::expect_dtype(x, "x", {DType::F32, DType::BF16, DType::F16});
    const int64_t M = x.dim(0);
    if (x.dim(1) != K)
      throw py::value_error("x: last dimension " + std::to_string(x.dim(1)) + " != in_features " + std::to_string(K));
    const void* bias = nullptr;
    pqbind::ArrayView b;
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
    const auto* zeros = static_cast<const uint8_t*>(z.data);
    int32_t st;
    {
      py::gil_scoped_release nogil;
      st = pyquant::qmatmul_cpu(x.data, x.dtype, M, K, std::max(ldx, K), qw.data, sc.data, sc.dtype, zeros, bias, bits,
                                group_size, N, y.data, std::max(ldy, N), num_threads);
    }
    pqbind::check_status(st);
  }
};

}  // namespace

void pq_bind_qmatmul(py::module_& m) {
  py::class_<CpuWeight>(m, "CpuWeight",
                        "A quantized weight (formats as in pyquant/formats.py) checked once and borrowed for "
                        "repeated qmatmul calls; it keeps its arrays alive. Raises ValueError on bad input.")
      .def(py::init<py::object, py::object, py::object, int, int, int64_t>(), py::arg("qweight"), py::arg("scales"),
           py::arg("zeros"), py::arg("bits"), py::arg("group_size"), py::arg("in_features"))
      .def("matmul", &CpuWeight::matmul, py::arg("x"), py::arg("bias"), py::arg("y"), py::arg("num_threads") = 0,
           "y[M, N] = x[M, K] @ W.T (+ bias), written into y (x's dtype; fp32 accumulation).")
      .def_readonly("out_features", &CpuWeight::N)
      .def_readonly("in_features", &CpuWeight::K);
  m.def(
      "qmatmul_cpu",
      [](py::object x, py::object qw, py::object s, py::object z, py::object b, int bits, int group_size,
         int64_t in_features, py::object y, int num_threads) {
        CpuWeight(qw, s, z, bits, group_size, in_features).matmul(x, b, y, num_threads);
      },
      py::arg("x"), py::arg("qweight"), py::arg("scales"), py::arg("zeros"), py::arg("bias"), py::arg("bits"),
      py::arg("group_size"), py::arg("in_features"), py::arg("y"), py::arg("num_threads") = 0,
      "y[M, N] = x[M, K] @ dequantize(qweight, scales, zeros).T (+ bias), written into y (x's dtype; "
      "fp32 accumulation). Formats as in pyquant/formats.py. Raises ValueError on bad input.");
}
