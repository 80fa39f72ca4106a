// pyquant._C: thin pybind11 bindings over the C++ API in csrc/include/pyquant/.
// Each op's bindings live in csrc/bind_<op>.cpp; this file only assembles the module.
#include "bind_common.h"
#ifdef PYQUANT_WITH_CUDA
#include "pyquant/cuda_api.h"
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyquant native kernels (CPU C++, optional CUDA)";
  m.def("cpu_isa", &pyquant::cpu_isa, "ISA the CPU kernels dispatch to here: avx512, avx2 or scalar");
  m.def("cpu_codes", &pyquant::cpu_codes,
        "How the CPU decode kernels turn weight codes into floats: subnormal (bit patterns) or convert");
  m.def("set_cpu_codes", [](const std::string& mode) {
    if (pyquant::set_cpu_codes(mode.c_str()) != pyquant::kOk) throw pybind11::value_error(pyquant::last_error());
  }, "Set how the CPU decode kernels read weight codes: convert, subnormal or auto (process-wide)");
  m.def("cpu_bf16_dot", &pyquant::cpu_bf16_dot,
        "Whether bf16 x (INT4 decode, the prefill GEMM) uses AVX512-BF16 dot products here: on or off");
  m.def("set_cpu_bf16_dot", [](const std::string& mode) {
    if (pyquant::set_cpu_bf16_dot(mode.c_str()) != pyquant::kOk) throw pybind11::value_error(pyquant::last_error());
  }, "Set whether bf16 x (INT4 decode, the prefill GEMM) uses AVX512-BF16 dot products: on, off or auto (process-wide)");
  m.def("cpu_bf16_gemm", &pyquant::cpu_bf16_gemm,
        "Whether the prefill GEMM takes bf16 x through AVX512-BF16 dot products here (default: on AMD CPUs): on or off");
  m.def("set_cpu_bf16_gemm", [](const std::string& mode) {
    if (pyquant::set_cpu_bf16_gemm(mode.c_str()) != pyquant::kOk) throw pybind11::value_error(pyquant::last_error());
  }, "Set whether the prefill GEMM takes bf16 x through AVX512-BF16 dot products: on, off or auto (process-wide)");
  m.def("cpu_vnni", &pyquant::cpu_vnni, "Whether the -a8 kernels (INT4 decode, INT8 decode, the GEMM) use AVX512-VNNI here: on or off");
  m.def("set_cpu_vnni", [](const std::string& mode) {
    if (pyquant::set_cpu_vnni(mode.c_str()) != pyquant::kOk) throw pybind11::value_error(pyquant::last_error());
  }, "Set whether the -a8 kernels (INT4 decode, INT8 decode, the GEMM) use AVX512-VNNI: on, off or auto (process-wide)");
  m.def("cpu_amx", &pyquant::cpu_amx, "Whether the prefill GEMMs (weight-only and -a8) run on AMX tiles here: on or off");
  m.def("set_cpu_amx", [](const std::string& mode) {
    if (pyquant::set_cpu_amx(mode.c_str()) != pyquant::kOk) throw pybind11::value_error(pyquant::last_error());
  }, "Set whether the prefill GEMMs (weight-only and -a8) run on AMX tiles: on, off or auto (process-wide)");
  m.def("built_with_cuda", []() {
#ifdef PYQUANT_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  m.def("cuda_device_count", []() {
#ifdef PYQUANT_WITH_CUDA
    return pyquant::cuda::device_count();
#else
    return 0;
#endif
  });
  pq_bind_qmatmul(m);
  pq_bind_stream(m);
  pq_bind_qmatmul_cuda(m);
  pq_bind_stream_cuda(m);
}
