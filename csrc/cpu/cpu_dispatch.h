// Internal to csrc/cpu: ISA levels and error helper shared by the CPU kernels.
#pragma once
#include <string>

namespace pyquant {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

// The ISA the CPU kernels use on this machine (detected once, PYQUANT_ISA may lower it).
Isa active_isa();

// Whether the decode kernels read weight codes as subnormal floats (detected once,
// PYQUANT_CODES=convert|subnormal overrides).
bool subnormal_codes();

// Whether INT4 decode with bf16 x uses bf16 dot products (AVX-512 kernels on a CPU with
// AVX512-BF16; PYQUANT_BF16_DOT=0 turns it off, set_cpu_bf16_dot switches it).
bool bf16_dot();

// Whether the prefill GEMM with bf16 x uses them too: bf16_dot() and the bf16-GEMM switch (on by
// default on AMD CPUs; PYQUANT_BF16_GEMM=0|1 overrides, set_cpu_bf16_gemm switches it).
bool bf16_gemm();

// The most rows the weight-only decode kernels take at K >= 1024 before the GEMM does: 24 on AMD
// CPUs, 12 elsewhere (see decode_rows in qmatmul_kernels.h).
int64_t wide_decode_rows();

// Whether the -a8 kernels use AVX512-VNNI's vpdpbusd: the INT4 decode tile, and the integer GEMM
// for more rows (AVX-512 kernels on a CPU with AVX512-VNNI; PYQUANT_VNNI=0 turns it off,
// set_cpu_vnni switches it).
bool vnni_dot();

// Whether the prefill GEMMs run on AMX tiles (AVX-512 kernels on a CPU with AMX-BF16 and AMX-INT8
// whose OS grants this process the tile state; PYQUANT_AMX=0 turns it off, set_cpu_amx switches it).
bool amx();

void set_last_error(const std::string& msg);

}  // namespace pyquant
