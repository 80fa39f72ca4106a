// Bindings for the CPU qmatmul kernel (csrc/include/pyquant/qmatmul.h): validate arrays, then
// run the kernel with the GIL released, writing into the caller's output array.
#include <string>
#include <utility>
#include <vector>

#include "bind_common.h"
#include "pyquant/qmatmul.h"

using pyquant::DType;

namespace {

void expect_shape(const pqbind::ArrayView& v, const char* name, const std::vector<int64_t>& w) {
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

// An array [..., C] as rows: (rows, row stride). The last dimension must have unit stride and the
// leading ones must collapse into one (each stride = the next one's extent times its stride; size-1
// dimensions do not count), as for a contiguous tensor or a 2-D slice of whole rows.
std::pair<int64_t, int64_t> as_rows(const pqbind::ArrayView& v, const char* name) {
  const int nd = v.ndim();
  if (nd < 1) throw py::value_error(std::string(name) + ": expected at least 1 dimension, got 0");
  const int64_t c = v.dim(-1);
  if (c > 1 && v.strides[nd - 1] != 1)
    throw py::value_error(std::string(name) + ": the last dimension must be contiguous (stride 1)");
  int64_t rows = 1;
  for (int i = nd - 2; i >= 0; --i) rows *= v.shape[i];
  if (rows == 0) return {0, c};  // no rows: whatever the strides of an empty array
  int64_t ld = c, inner = -1;  // inner: stride of the next leading dimension of size > 1
  for (int i = nd - 2; i >= 0; --i) {
    if (v.shape[i] == 1) continue;
    if (inner < 0) ld = v.strides[i];
    else if (v.strides[i] != inner) throw py::value_error(std::string(name) + ": leading dimensions must collapse into rows (make it contiguous)");
    inner = v.strides[i] * v.shape[i];
  }
  return {rows, ld};
}

// A weight checked once and kept (borrowed, with its owners alive) for repeated calls: the
// per-call work is then x, bias and y only. Python's cpu backend caches one per QuantizedWeight.
struct CpuWeight {
  pqbind::ArrayView qw, sc, z;
  int bits = 0, group_size = 0, act_bits = 0;
  int64_t N = 0, K = 0;

  CpuWeight(py::object qw_obj, py::object s_obj, py::object z_obj, int bits_, int group_size_, int64_t in_features,
            int act_bits_)
      : bits(bits_), group_size(group_size_), act_bits(act_bits_), K(in_features) {
    if (act_bits != 0 && act_bits != 8)
      throw py::value_error("unsupported activation bits " + std::to_string(act_bits) + " (use 0 or 8)");
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

  // y[..., N] = x[..., K] @ W.T (+ bias), written into y (x's leading shape; see as_rows).
  void matmul(py::object x_obj, py::object b_obj, py::object y_obj, int num_threads) const {
    auto x = pqbind::as_array(x_obj, "x");
    auto y = pqbind::as_array(y_obj, "y");
    expect_cpu(x, "x");
    expect_cpu(y, "y");
    pqbind::expect_dtype(x, "x", {DType::F32, DType::BF16, DType::F16});
    if (x.ndim() < 1 || x.dim(-1) != K)
      throw py::value_error("x: last dimension " + (x.ndim() ? std::to_string(x.dim(-1)) : std::string("(none)")) +
                            " != in_features " + std::to_string(K));
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
    pqbind::expect_dtype(y, "y", {x.dtype});
    std::vector<int64_t> yshape(x.shape.begin(), x.shape.end() - 1);
    yshape.push_back(N);
    expect_shape(y, "y", yshape);  // x's leading dimensions, then N
    const auto [M, ldx] = as_rows(x, "x");
    const int64_t ldy = as_rows(y, "y").second;
    if (M > 1 && (ldx < K || ldy < N)) throw py::value_error("x, y: rows overlap (row stride smaller than a row)");
    const auto* zeros = static_cast<const uint8_t*>(z.data);
    int32_t st;
    {
      py::gil_scoped_release nogil;
      st = pyquant::qmatmul_cpu(x.data, x.dtype, M, K, std::max(ldx, K), qw.data, sc.data, sc.dtype, zeros, bias, bits,
                                group_size, N, y.data, std::max(ldy, N), num_threads, act_bits);
    }
    pqbind::check_status(st);
  }
};

}  // namespace

void pq_bind_qmatmul(py::module_& m) {
  py::class_<CpuWeight>(m, "CpuWeight",
                        "A quantized weight (formats as in pyquant/formats.py; act_bits=8 for the -a8 specs) checked once and borrowed for "
                        "repeated qmatmul calls; it keeps its arrays alive. Raises ValueError on bad input.")
      .def(py::init<py::object, py::object, py::object, int, int, int64_t, int>(), py::arg("qweight"), py::arg("scales"),
           py::arg("zeros"), py::arg("bits"), py::arg("group_size"), py::arg("in_features"), py::arg("act_bits") = 0)
      .def("matmul", &CpuWeight::matmul, py::arg("x"), py::arg("bias"), py::arg("y"), py::arg("num_threads") = 0,
           "y[..., N] = x[..., K] @ W.T (+ bias), written into y (x's dtype and leading dimensions; fp32 "
           "accumulation). The leading dimensions must collapse into rows of unit-stride elements.")
      .def_readonly("out_features", &CpuWeight::N)
      .def_readonly("in_features", &CpuWeight::K);
  m.def(
      "qmatmul_cpu",
      [](py::object x, py::object qw, py::object s, py::object z, py::object b, int bits, int group_size,
         int64_t in_features, py::object y, int num_threads, int act_bits) {
        CpuWeight(qw, s, z, bits, group_size, in_features, act_bits).matmul(x, b, y, num_threads);
      },
      py::arg("x"), py::arg("qweight"), py::arg("scales"), py::arg("zeros"), py::arg("bias"), py::arg("bits"),
      py::arg("group_size"), py::arg("in_features"), py::arg("y"), py::arg("num_threads") = 0, py::arg("act_bits") = 0,
      "y[..., N] = x[..., K] @ dequantize(qweight, scales, zeros).T (+ bias), written into y (x's dtype "
      "and leading dimensions; fp32 accumulation). Formats as in pyquant/formats.py; act_bits=8: x quantized to "
      "int8 first (the -a8 specs). Raises ValueError on bad input.");
}
