"""The AVX-512 CPU kernels, run on any x86 CPU through portable stand-ins for their intrinsics.

csrc/cpu/qmatmul_avx512.cpp is picked at run time on CPUs with AVX-512, which CI machines may
have and a development machine may not. Here it is compiled with tests/ops/avx512_emu.h in front
(each intrinsic it uses, written lane by lane in plain C++) and loaded with ctypes, so its
vector traits and the shared kernels at 16 lanes (blocks of 128 INT4 codes, per-lane scales for
groups of 32 and 64, 32-wide prefill panels) are checked against float64 like the other ISAs.
The same shapes and specs as tests/ops/test_qmatmul.py, every way of reading codes: convert,
subnormal, and bf16 dot products (INT4 with bf16 x; vdpbf16ps written lane by lane); and the
-a8 specs (x quantized to int8; vpmaddubsw, vpmaddwd and vpdpbusd written lane by lane); AMX's
tiles element by element (tdpbf16ps, tdpbssd) for the prefill GEMMs.
"""
import ctypes
import os
import shutil
import subprocess

import pytest
import torch

from pyquant.ops.reference import quantize_activations
from pyquant.quant.rtn import quantize_weight

from helpers import assert_matmul_close, randn
from test_qmatmul import A8_SPECS, DTYPES, SHAPES, SPECS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))

SOURCE = r"""
#include "avx512_emu.h"
#define isa_avx512 isa_avx512_emu
#include "qmatmul_avx512.cpp"

namespace pyquant {
static bool g_sub = false, g_bf = false, g_vnni = false, g_amx = false;
bool subnormal_codes() { return g_sub; }
bool bf16_dot() { return g_bf; }
bool bf16_gemm() { return g_bf; }
int64_t wide_decode_rows() { return 24; }
bool vnni_dot() { return g_vnni; }
bool amx() { return g_amx; }
void set_last_error(const std::string&) {}
}  // namespace pyquant

extern "C" void emu_qmatmul(const void* x, int xdt, int64_t M, int64_t K, int64_t ldx, const void* qw,
                            const void* scales, int sdt, const uint8_t* zeros, const void* bias, int bits,
                            int group, int64_t N, void* y, int64_t ldy, int nthreads, int sub, int bf, int act, int vnni,
                            int amx) {
  using namespace pyquant;
  g_sub = sub != 0;
  g_bf = bf != 0;
  g_vnni = vnni != 0;
  g_amx = amx != 0;
  const QmmArgs a{x, DType(xdt), M, K, ldx, qw, scales, DType(sdt), zeros, bias, bits, group, N, y, ldy, nthreads,
                  DType(xdt), act};
  isa_avx512_emu::qmatmul_run(a);
}
"""

_DT = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("needs a C++17 compiler")
    if os.uname().machine not in ("x86_64", "AMD64"):
        pytest.skip("the stand-ins wrap <immintrin.h>: x86 only")
    d = tmp_path_factory.mktemp("avx512_emu")
    (d / "emu.cpp").write_text(SOURCE)
    cmd = [cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-fopenmp", f"-I{HERE}", f"-I{REPO}/csrc/include",
           f"-I{REPO}/csrc/cpu", str(d / "emu.cpp"), "-o", str(d / "emu.so")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return ctypes.CDLL(str(d / "emu.so"))


def _call(lib, x, qw, b, sub: bool, bf: bool = False, vnni: bool = False, amx: bool = False) -> torch.Tensor:
    """y through the emulated kernels; x is quantized to int8 inside where qw's spec ends in -a8."""
    m, k = x.shape
    n = qw.out_features
    y = torch.full((m, n), float("nan"), dtype=x.dtype)
    P, I, C = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    z = qw.zeros
    lib.emu_qmatmul(P(x.data_ptr()), C(_DT[x.dtype]), I(m), I(k), I(x.stride(0)), P(qw.qweight.data_ptr()),
                    P(qw.scales.data_ptr()), C(_DT[qw.scales.dtype]), P(None if z is None else z.data_ptr()),
                    P(None if b is None else b.data_ptr()), C(qw.spec.bits), C(qw.spec.group_size or 0), I(n),
                    P(y.data_ptr()), I(n), C(2), C(int(sub)), C(int(bf)), C(qw.spec.act_bits or 0),
                    C(int(vnni)), C(int(amx)))
    return y


@pytest.mark.parametrize("codes", ["convert", "subnormal", "bf16dot", "amx"])
@pytest.mark.parametrize("spec", SPECS)
def test_avx512_kernels_emulated(emu, spec, codes):
    """Every shape of the main harness (decode M <= 8 and prefill), dtypes and bias rotating
    (bf16dot: bf16 x throughout, the only dtype it takes; amx: the prefill GEMM on AMX tiles, its
    x as 1, 2 or 3 bf16 terms, tdpbf16ps written element by element)."""
    s = SPECS.index(spec)
    for i, (m, n, k) in enumerate(SHAPES):
        dtype = torch.bfloat16 if codes == "bf16dot" else DTYPES[(i + s) % len(DTYPES)]
        bias = (i + s) % 2 == 1
        qw = quantize_weight(randn(n, k, seed=i), spec)
        x = randn(m, k, dtype=dtype, seed=3000 + 10 * i + s)
        b = randn(n, dtype=dtype, seed=4000 + i) if bias else None
        y = _call(emu, x, qw, b, codes == "subnormal", codes == "bf16dot", amx=codes == "amx")
        assert_matmul_close(y, x, qw.dequantize(torch.float64), b,
                            what=f"avx512 (emulated) {codes} {spec} M={m} N={n} K={k} {dtype} bias={bias}")


@pytest.mark.parametrize("sums", ["maddubs", "vnni", "amx"])
@pytest.mark.parametrize("spec", A8_SPECS)
def test_avx512_a8_emulated(emu, spec, sums):
    """-a8 at 16 lanes: the integer tile's 128-code blocks (per-lane scales for groups of 32 and
    64, a last block past the row's end) and the fp32-copy paths, against the float64 definition;
    the tile's sums through vpmaddubsw + vpmaddwd, or through vpdpbusd (vnni); amx: past 8 rows
    (12 for INT8 at 1024 <= K < 4096, 56 for groups of 32) the GEMM on AMX tiles, tdpbssd written
    element by element (groups of 32 on half tiles, whose configured shape the stand-in enforces)."""
    vnni = sums != "maddubs"
    s = A8_SPECS.index(spec)
    for i, (m, n, k) in enumerate(SHAPES):
        dtype = DTYPES[(i + s) % len(DTYPES)]
        bias = (i + s) % 2 == 0
        qw = quantize_weight(randn(n, k, seed=i), spec)
        x = randn(m, k, dtype=dtype, seed=5000 + 10 * i + s)
        b = randn(n, dtype=dtype, seed=6000 + i) if bias else None
        y = _call(emu, x, qw, b, True, vnni=vnni, amx=sums == "amx")
        xe = quantize_activations(x, qw.spec.act_block(k))
        assert_matmul_close(y, xe, qw.dequantize(torch.float64), b, out_dtype=dtype,
                            what=f"avx512 (emulated) {spec} M={m} N={n} K={k} {dtype} bias={bias}")


def test_avx512_emulated_strided_x(emu):
    """Rows of x further apart than K (ldx > K), through the decode and the prefill paths."""
    for m in (3, 20):
        qw = quantize_weight(randn(37, 300, seed=m), "int4-g64")
        x = randn(m, 310, seed=m)[:, 5:305]
        assert_matmul_close(_call(emu, x, qw, None, True), x, qw.dequantize(torch.float64), None,
                            what=f"avx512 (emulated) strided x M={m}")
