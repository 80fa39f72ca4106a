// Bindings for the stream tile reducer (csrc/include/pyquant/stream.h): arrays in, state updated in place.
#include "bind_common.h"
#include "pyquant/stream.h"

namespace {

using pqbind::ArrayView;
using pyquant::DType;

// Check a state array: given dtype, shape, contiguous, on the CPU.
void expect_state(const ArrayView& v, const char* name, DType dt, std::initializer_list<int64_t> shape) {
  pqbind::expect_dtype(v, name, {dt});
  if (v.device != pqbind::kCPU) throw py::value_error(std::string(name) + ": must be a CPU array");
  std::vector<int64_t> want(shape);
  if (v.shape != want) {
    std::string msg = std::string(name) + ": expected shape [";
    for (size_t i = 0; i < want.size(); ++i) msg += (i ? ", " : "") + std::to_string(want[i]);
    throw py::value_error(msg + "]");
  }
  pqbind::expect_contiguous(v, name);
}

void reduce_tile(const py::object& logits_o, int64_t v0, const py::object& run_max_o, const py::object& run_sum_o,
                 const py::object& top_vals_o, const py::object& top_ids_o, const py::object& targets_o,
                 const py::object& target_logits_o, const py::object& ref_ids_o, const py::object& ref_logits_o,
                 int num_threads) {
  ArrayView lg = pqbind::as_array(logits_o, "logits");
  pqbind::expect_dtype(lg, "logits", {DType::F32});
  pqbind::expect_ndim(lg, "logits", 2);
  if (lg.device != pqbind::kCPU) throw py::value_error("logits: must be a CPU array");
  const int64_t rows = lg.dim(0), vt = lg.dim(1);
  if (vt > 1 && lg.strides[1] != 1) throw py::value_error("logits: columns must be contiguous (stride 1)");
  const int64_t ld = rows > 1 ? lg.strides[0] : vt;
  if (ld < vt) throw py::value_error("logits: row stride is smaller than the tile width");
  ArrayView mx = pqbind::as_array(run_max_o, "run_max"), sm = pqbind::as_array(run_sum_o, "run_sum");
  ArrayView tv = pqbind::as_array(top_vals_o, "top_vals"), ti = pqbind::as_array(top_ids_o, "top_ids");
  expect_state(mx, "run_max", DType::F32, {rows});
  expect_state(sm, "run_sum", DType::F32, {rows});
  pqbind::expect_ndim(tv, "top_vals", 2);
  const int64_t n = tv.dim(1);
  expect_state(tv, "top_vals", DType::F32, {rows, n});
  expect_state(ti, "top_ids", DType::I64, {rows, n});
  const int64_t* targets = nullptr;
  float* target_logits = nullptr;
  ArrayView tg, tl, ri, rl;
  if (!targets_o.is_none()) {
    tg = pqbind::as_array(targets_o, "targets");
    tl = pqbind::as_array(target_logits_o, "target_logits");
    expect_state(tg, "targets", DType::I64, {rows});
    expect_state(tl, "target_logits", DType::F32, {rows});
    targets = static_cast<const int64_t*>(tg.data);
    target_logits = static_cast<float*>(tl.data);
  }
  const int64_t* ref_ids = nullptr;
  float* ref_logits = nullptr;
  int64_t n_ref = 0;
  if (!ref_ids_o.is_none()) {
    ri = pqbind::as_array(ref_ids_o, "ref_ids");
    rl = pqbind::as_array(ref_logits_o, "ref_logits");
    pqbind::expect_ndim(ri, "ref_ids", 2);
    n_ref = ri.dim(1);
    expect_state(ri, "ref_ids", DType::I64, {rows, n_ref});
    expect_state(rl, "ref_logits", DType::F32, {rows, n_ref});
    ref_ids = static_cast<const int64_t*>(ri.data);
    ref_logits = static_cast<float*>(rl.data);
  }
  int32_t status;
  {
    py::gil_scoped_release nogil;
    status = pyquant::stream_reduce_tile_cpu(
        static_cast<const float*>(lg.data), rows, vt, ld, v0, static_cast<float*>(mx.data), static_cast<float*>(sm.data),
        static_cast<float*>(tv.data), static_cast<int64_t*>(ti.data), static_cast<int>(n), targets, target_logits,
        ref_ids, static_cast<int>(n_ref), ref_logits, num_threads);
  }
  pqbind::check_status(status);
}

}  // namespace

void pq_bind_stream(py::module_& m) {
  m.def("stream_reduce_tile_cpu", &reduce_tile, py::arg("logits"), py::arg("v0"), py::arg("run_max"),
        py::arg("run_sum"), py::arg("top_vals"), py::arg("top_ids"), py::arg("targets") = py::none(),
        py::arg("target_logits") = py::none(), py::arg("ref_ids") = py::none(), py::arg("ref_logits") = py::none(),
        py::arg("num_threads") = 0,
        "Fold one [rows, vt] float32 logits tile (vocab ids v0..v0+vt) into the running stream state, in place.");
}
