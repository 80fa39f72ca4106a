// Bindings for the stream CUDA tile reducer (pyquant/stream_cuda.h); a no-op without CUDA.
#include "bind_common.h"

#ifdef PYQUANT_WITH_CUDA
#include <cstdint>
#include <string>

#include "pyquant/stream_cuda.h"

namespace {

using pqbind::ArrayView;
using pyquant::DType;

// Borrow a CUDA array of dtype `dt` and shape `shape` (-1: any size); ValueError naming it otherwise.
ArrayView cuda_array(const py::object& obj, const char* name, DType dt, std::initializer_list<int64_t> shape,
                     bool need_contiguous = true) {
  ArrayView v = pqbind::as_array(obj, name);
  if (v.device != pqbind::kCUDA) throw py::value_error(std::string(name) + ": must be a CUDA array");
  pqbind::expect_dtype(v, name, {dt});
  pqbind::expect_ndim(v, name, static_cast<int>(shape.size()));
  int i = 0;
  for (int64_t s : shape) {
    if (s >= 0 && v.shape[i] != s)
      throw py::value_error(std::string(name) + ": dimension " + std::to_string(i) + " is " +
                            std::to_string(v.shape[i]) + ", expected " + std::to_string(s));
    ++i;
  }
  if (need_contiguous) pqbind::expect_contiguous(v, name);
  return v;
}

void same_device(const ArrayView& a, const ArrayView& b, const char* name) {
  if (a.device_id != b.device_id) throw py::value_error(std::string(name) + ": is on another CUDA device than logits");
}

}  // namespace

void pq_bind_stream_cuda(py::module_& m) {
  m.def(
      "stream_reduce_tile_cuda",
      [](const py::object& logits, int64_t v0, const py::object& run_max, const py::object& run_sum,
         const py::object& top_vals, const py::object& top_ids, const py::object& targets,
         const py::object& target_logits, const py::object& ref_ids, const py::object& ref_logits,
         std::uintptr_t stream) {
        ArrayView lg = cuda_array(logits, "logits", DType::F32, {-1, -1}, false);
        const int64_t rows = lg.shape[0], vt = lg.shape[1];
        if (vt > 1 && lg.strides[1] != 1) throw py::value_error("logits: columns must be contiguous (stride 1)");
        const int64_t ld = rows > 1 ? lg.strides[0] : vt;
        if (ld < vt) throw py::value_error("logits: row stride smaller than the row length");
        ArrayView mx = cuda_array(run_max, "run_max", DType::F32, {rows});
        ArrayView sm = cuda_array(run_sum, "run_sum", DType::F32, {rows});
        ArrayView tv = cuda_array(top_vals, "top_vals", DType::F32, {rows, -1});
        const int64_t n = tv.shape[1];
        ArrayView ti = cuda_array(top_ids, "top_ids", DType::I64, {rows, n});
        for (auto* p : {&mx, &sm, &tv, &ti}) same_device(*p, lg, "state");
        ArrayView tg, tl, ri, rl;
        if (!targets.is_none()) {
          tg = cuda_array(targets, "targets", DType::I64, {rows});
          tl = cuda_array(target_logits, "target_logits", DType::F32, {rows});
          same_device(tg, lg, "targets");
          same_device(tl, lg, "target_logits");
        }
        int64_t n_ref = 0;
        if (!ref_ids.is_none()) {
          ri = cuda_array(ref_ids, "ref_ids", DType::I64, {rows, -1});
          n_ref = ri.shape[1];
          rl = cuda_array(ref_logits, "ref_logits", DType::F32, {rows, n_ref});
          same_device(ri, lg, "ref_ids");
          same_device(rl, lg, "ref_logits");
        }
        if (n < 1 || n > pyquant::kStreamCudaMaxTopN)
          throw py::value_error("top_vals: top_n must be in [1, " + std::to_string(pyquant::kStreamCudaMaxTopN) + "]");
        pqbind::check_status(pyquant::stream_reduce_tile_cuda(
            static_cast<const float*>(lg.data), rows, vt, ld, v0, static_cast<float*>(mx.data),
            static_cast<float*>(sm.data), static_cast<float*>(tv.data), static_cast<int64_t*>(ti.data),
            static_cast<int>(n), static_cast<const int64_t*>(tg.data), static_cast<float*>(tl.data),
            static_cast<const int64_t*>(ri.data), static_cast<int>(n_ref), static_cast<float*>(rl.data),
            reinterpret_cast<void*>(stream)));
      },
      py::arg("logits"), py::arg("v0"), py::arg("run_max"), py::arg("run_sum"), py::arg("top_vals"),
      py::arg("top_ids"), py::arg("targets"), py::arg("target_logits"), py::arg("ref_ids"), py::arg("ref_logits"),
      py::arg("stream"),
      "Fold a CUDA float32 logits tile [rows, vt] (columns = ids v0..v0+vt-1) into the running state in "
      "place (see pyquant/stream_cuda.h); queued on the CUDA stream given as an int (cudaStream_t).");
}
#else
void pq_bind_stream_cuda(py::module_& m) { (void)m; }
#endif
