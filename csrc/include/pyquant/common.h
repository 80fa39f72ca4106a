// pyquant embeddable C++ API: shared types. Plain pointers, shapes, strides, a stream.
// No Python, no torch: link libpyquant_cpu (and libpyquant_cuda) from any inference stack.
#pragma once
#include <cstdint>

namespace pyquant {

enum class DType : int32_t { F32 = 0, F16 = 1, BF16 = 2, I8 = 3, U8 = 4, I32 = 5, I64 = 6, F64 = 7 };

// Status codes returned by every entry point (0 = success). Messages via last_error().
enum Status : int32_t { kOk = 0, kInvalidArgument = 1, kUnsupported = 2, kCudaError = 3 };

// Thread-local description of the last failure on this thread.
const char* last_error();

// Instruction set the CPU kernels dispatch to on this machine: "avx512", "avx2" or "scalar".
const char* cpu_isa();

// How the CPU decode kernels turn weight codes into floats: "subnormal" or "convert".
const char* cpu_codes();
// Sets it for the whole process: "convert", "subnormal" or "auto" (the default for this CPU).
// Results are identical for INT4; the choice is a speed knob (and lets a benchmark time both).
Status set_cpu_codes(const char* mode);

// Whether the CPU kernels take bf16 x through bf16 dot products (AVX512-BF16's vdpbf16ps: two
// codes per fp32 lane) instead of fp32 multiply-adds: INT4 decode from 2 rows, and, where
// cpu_bf16_gemm() is also on, the prefill GEMM (INT4 from 13 rows, INT8 from 9): "on" or "off".
const char* cpu_bf16_dot();
// Sets it for the whole process: "on" (kUnsupported where the AVX-512 kernels are not in use or
// the CPU lacks AVX512-BF16), "off" or "auto" (on where available, the default). Results differ
// by rounding only: each product is exact either way, the sums are rounded in another order.
Status set_cpu_bf16_dot(const char* mode);

// Whether the prefill GEMM takes bf16 x through those dot products too (when cpu_bf16_dot is on):
// "on" or "off". The default is on for AMD CPUs only: on Zen 4 the bf16 GEMM ran 1.8-2.1x the fp32
// one, on an Intel Xeon (AVX512-BF16, AMX) 0.70-0.78x, where the decode kernels' bf16 dot products
// still ran 1.00-1.16x. PYQUANT_BF16_GEMM=0 or 1 overrides the default.
const char* cpu_bf16_gemm();
// Sets it for the whole process: "on" (kUnsupported where bf16 dot products are unavailable),
// "off" or "auto" (this CPU's default). Results differ by rounding only.
Status set_cpu_bf16_gemm(const char* mode);

// Whether the prefill GEMMs (more rows than the decode kernels take) run on AMX tiles: weight-only
// on AMX-BF16's tdpbf16ps (W's codes as exact bf16 integers, x as one (bf16), two (fp16) or three
// (fp32) bf16 terms that sum to it exactly, products summed in fp32 per group), and -a8 past 8
// rows (12 for INT8 at 1024 <= K < 4096, 56 for groups of 32) on AMX-INT8's tdpbssd (W's codes
// and x's as s8, exact s32 sums per group): "on" or "off".
const char* cpu_amx();
// Sets it for the whole process: "on" (kUnsupported where the AVX-512 kernels are not in use, the
// CPU lacks AMX-BF16 or AMX-INT8, or the OS refuses the tile state), "off" or "auto" (on where
// available, the default). Results differ by rounding only (INT4 -a8: not at all where the VNNI
// GEMM would run instead).
Status set_cpu_amx(const char* mode);

// Whether the CPU kernels use AVX512-VNNI's vpdpbusd (four u8 x s8 products into an s32 lane) for
// -a8: in the INT4 decode tile (M <= 8, or <= 16 at K >= 1024) instead of vpmaddubsw and vpmaddwd;
// for INT8 weights at decode sizes (M <= 8, 12 at K >= 1024, 24 at K >= 4096) as a tile of its own,
// and for more rows as an integer GEMM, instead of fp32 kernels on x's q * s: "on" or "off".
const char* cpu_vnni();
// Sets it for the whole process: "on" (kUnsupported where the AVX-512 kernels are not in use or
// the CPU lacks AVX512-VNNI), "off" or "auto" (on where available, the default). INT4 decode
// results are identical (the integer sums are exact either way); the rest differ by rounding only
// (the integer kernels sum each scale group exactly, the fp32 kernels round every product's sum).
Status set_cpu_vnni(const char* mode);

}  // namespace pyquant
