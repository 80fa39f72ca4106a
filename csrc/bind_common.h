// Shared by the csrc/bind_*.cpp files: turn any Python array (DLPack or buffer protocol:
// torch, numpy, ...) into a borrowed view with a pyquant::DType, shape and strides.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "pyquant/common.h"

namespace py = pybind11;

namespace pqbind {

// Minimal DLPack ABI (v0.8 DLManagedTensor), enough to borrow a tensor's data.
struct DLDevice { int32_t device_type; int32_t device_id; };
struct DLDataType { uint8_t code; uint8_t bits; uint16_t lanes; };
struct DLTensor {
  void* data; DLDevice device; int32_t ndim; DLDataType dtype;
  int64_t* shape; int64_t* strides; uint64_t byte_offset;
};
struct DLManagedTensor { DLTensor dl_tensor; void* manager_ctx; void (*deleter)(DLManagedTensor*); };

enum DeviceKind { kCPU = 1, kCUDA = 2 };

struct ArrayView {
  void* data = nullptr;
  pyquant::DType dtype = pyquant::DType::F32;
  int device = kCPU;   // DLPack device type
  int device_id = 0;
  std::vector<int64_t> shape, strides;  // strides in elements
  py::object keepalive;                 // the capsule or buffer that owns the borrowed memory

  int64_t dim(int i) const { return shape.at(i < 0 ? shape.size() + i : i); }
  int ndim() const { return static_cast<int>(shape.size()); }
  bool contiguous() const {
    int64_t expect = 1;
    for (int i = ndim() - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != expect) return false;
      expect *= shape[i];
    }
    return true;
  }
};

inline const char* dtype_name(pyquant::DType d) {
  static const char* names[] = {"float32", "float16", "bfloat16", "int8", "uint8", "int32", "int64", "float64"};
  return names[static_cast<int>(d)];
}

inline pyquant::DType from_dl(DLDataType t) {
  if (t.lanes != 1) throw py::value_error("vector dtypes are not supported");
  if (t.code == 2 && t.bits == 32) return pyquant::DType::F32;
  if (t.code == 2 && t.bits == 16) return pyquant::DType::F16;
  if (t.code == 2 && t.bits == 64) return pyquant::DType::F64;
  if (t.code == 4 && t.bits == 16) return pyquant::DType::BF16;
  if (t.code == 0 && t.bits == 8) return pyquant::DType::I8;
  if (t.code == 1 && t.bits == 8) return pyquant::DType::U8;
  if (t.code == 0 && t.bits == 32) return pyquant::DType::I32;
  if (t.code == 0 && t.bits == 64) return pyquant::DType::I64;
  throw py::value_error("unsupported array dtype (code " + std::to_string(t.code) + ", bits " + std::to_string(t.bits) + ")");
}

inline pyquant::DType from_format(const std::string& f, py::ssize_t itemsize) {
  char c = f.empty() ? '?' : f.back();
  if (c == 'f' && itemsize == 4) return pyquant::DType::F32;
  if (c == 'e' && itemsize == 2) return pyquant::DType::F16;
  if (c == 'd' && itemsize == 8) return pyquant::DType::F64;
  if (c == 'b' && itemsize == 1) return pyquant::DType::I8;
  if (c == 'B' && itemsize == 1) return pyquant::DType::U8;
  if ((c == 'i' || c == 'l' || c == 'q') && itemsize == 4) return pyquant::DType::I32;
  if ((c == 'l' || c == 'q') && itemsize == 8) return pyquant::DType::I64;
  throw py::value_error("unsupported buffer format '" + f + "'");
}

// Borrow `obj` (anything with __dlpack__, or the buffer protocol). `name` is used in errors.
// A bare DLPack capsule (e.g. from torch.utils.dlpack.to_dlpack) is taken as it is: it saves the
// __dlpack__ call, which matters for decode-size calls (a few microseconds each).
inline ArrayView as_array(const py::object& obj, const char* name) {
  ArrayView v;
  const bool capsule = PyCapsule_IsValid(obj.ptr(), "dltensor");
  if (capsule || py::hasattr(obj, "__dlpack__")) {
    py::object cap = capsule ? obj : obj.attr("__dlpack__")();
    auto* mt = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
    if (!mt) throw py::value_error(std::string(name) + ": could not read its DLPack capsule");
    const DLTensor& t = mt->dl_tensor;
    v.data = static_cast<char*>(t.data) + t.byte_offset;
    v.dtype = from_dl(t.dtype);
    v.device = t.device.device_type;
    v.device_id = t.device.device_id;
    v.shape.assign(t.shape, t.shape + t.ndim);
    if (t.strides) {
      v.strides.assign(t.strides, t.strides + t.ndim);
    } else {
      v.strides.resize(t.ndim);
      int64_t s = 1;
      for (int i = t.ndim - 1; i >= 0; --i) { v.strides[i] = s; s *= t.shape[i]; }
    }
    v.keepalive = cap;  // capsule stays unconsumed: its destructor releases the tensor
    return v;
  }
  if (PyObject_CheckBuffer(obj.ptr())) {
    py::buffer buf = py::reinterpret_borrow<py::buffer>(obj);
    py::buffer_info info = buf.request(true);
    v.data = info.ptr;
    v.dtype = from_format(info.format, info.itemsize);
    v.shape.assign(info.shape.begin(), info.shape.end());
    for (auto s : info.strides) {
      if (s % info.itemsize) throw py::value_error(std::string(name) + ": strides not a multiple of the item size");
      v.strides.push_back(s / info.itemsize);
    }
    v.keepalive = obj;
    return v;
  }
  throw py::value_error(std::string(name) + ": expected an array (DLPack or buffer protocol), got " +
                        std::string(py::str(obj.get_type())));
}

// Raise ValueError naming the argument unless the view has the wanted dtype / rank / layout.
inline void expect_dtype(const ArrayView& v, const char* name, std::initializer_list<pyquant::DType> ok) {
  for (auto d : ok) if (v.dtype == d) return;
  std::string msg = std::string(name) + ": unsupported dtype " + dtype_name(v.dtype) + " (expected";
  for (auto d : ok) msg += std::string(" ") + dtype_name(d);
  throw py::value_error(msg + ")");
}
inline void expect_ndim(const ArrayView& v, const char* name, int ndim) {
  if (v.ndim() != ndim)
    throw py::value_error(std::string(name) + ": expected " + std::to_string(ndim) + " dimensions, got " + std::to_string(v.ndim()));
}
inline void expect_contiguous(const ArrayView& v, const char* name) {
  if (!v.contiguous()) throw py::value_error(std::string(name) + ": must be contiguous (row-major)");
}
inline void check_status(int32_t status) {
  if (status != pyquant::kOk) throw py::value_error(pyquant::last_error());
}

}  // namespace pqbind

// Each bind_*.cpp defines one of these; bindings.cpp calls them all.
void pq_bind_qmatmul(py::module_& m);
void pq_bind_stream(py::module_& m);
void pq_bind_qmatmul_cuda(py::module_& m);  // no-op unless PYQUANT_WITH_CUDA
void pq_bind_stream_cuda(py::module_& m);   // no-op unless PYQUANT_WITH_CUDA
