"""qmatmul on every available backend vs a float64 reference (one harness for all backends).

A backend is tested the moment it registers: the parametrization walks
``pq.ops.available_backends("qmatmul", device)`` for the CPU (the Triton interpreter included when
TRITON_INTERPRET=1) and CUDA when present. Slow backends get a size cap (LIMITS). Also: the
C++ kernels of the ISAs below this CPU's best (subprocesses with PYQUANT_ISA: scalar, and AVX2 on
an AVX-512 CPU), both ways the CPU decode kernels read weight codes (convert, subnormal), thread-count invariance,
3-D inputs, and bad input raising ValueError naming the problem. The AVX-512 kernels on CPUs
without AVX-512: test_qmatmul_avx512_emu.py.
"""
import functools
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import pyquant as pq
from pyquant.ops import _native
from pyquant.ops.reference import quantize_activations
from pyquant.quant.rtn import quantize_weight

from helpers import assert_matmul_close, assert_rows_read_only_their_own_scales, randn

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BACKENDS = [(d, b) for d in DEVICES for b in pq.ops.available_backends("qmatmul", d)]
# Largest (M, N, K) each backend runs here (the Triton interpreter on the CPU is slow).
LIMITS = {("cpu", "triton"): (16, 48, 1000)}

SPECS = ["int8", "int8-fp16", "int4-g32", "int4-g64", "int4-g128", "int4-g256", "int4-g32-sym",
         "int4-g128-sym", "int4-g64-fp16", "int4-g256-sym-fp16"]
# (M, N, K): odd sizes, K from 32 to 8192 with ragged last groups; M <= 8 is the decode path,
# M > 8 the blocked prefill path (N > 128 and K > 256 cross its N and K blocks).
SHAPES = [(1, 1, 32), (1, 7, 100), (2, 33, 129), (3, 13, 576), (5, 9, 1000), (8, 31, 4096), (1, 17, 8192),
          (4, 5, 8191), (9, 21, 300), (13, 40, 64), (37, 45, 1000), (64, 130, 520), (11, 19, 777),
          (13, 23, 1100), (24, 6, 2050), (25, 11, 1024),  # these three: decode and GEMM at K >= 1024
          (11, 9, 1030), (19, 5, 4100)]  # and INT8 -a8's VNNI decode past 8 rows (a8_int8_max_m)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _fits(device, backend, m, n, k):
    lim = LIMITS.get((device, backend))
    return lim is None or (m <= lim[0] and n <= lim[1] and k <= lim[2])


@functools.lru_cache(maxsize=None)
def _weight(spec, n, k, seed):
    """(QuantizedWeight on the CPU, its float64 dequantization): shared by every backend."""
    qw = quantize_weight(randn(n, k, seed=seed), spec)
    return qw, qw.dequantize(torch.float64)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("device,backend", BACKENDS, ids=[f"{d}-{b}" for d, b in BACKENDS])
def test_matches_float64(device, backend, spec):
    """Every shape once per spec; the activation dtype rotates with the shape and the spec so each
    (shape, dtype) pair is covered across SPECS, and bias alternates."""
    _check_shapes(device, backend, spec, SPECS.index(spec))


# -a8: x quantized to int8 per row and block first; the CPU kernel's INT4 decode path multiplies
# integers, everything else runs the weight-only kernels on x's int8 approximation.
A8_SPECS = ["int4-g128-a8", "int4-g32-a8", "int4-g64-sym-a8", "int4-g256-fp16-a8", "int8-a8"]


@pytest.mark.parametrize("spec", A8_SPECS)
@pytest.mark.parametrize("device,backend", BACKENDS, ids=[f"{d}-{b}" for d, b in BACKENDS])
def test_a8_matches_float64(device, backend, spec):
    """y = quantize_activations(x) @ dequantize(W).T in float64, every shape, in x's dtype."""
    _check_shapes(device, backend, spec, A8_SPECS.index(spec))


def _check_shapes(device, backend, spec, s):
    ran = 0
    for i, (m, n, k) in enumerate(SHAPES):
        if not _fits(device, backend, m, n, k):
            continue
        dtype = DTYPES[(i + s) % len(DTYPES)]
        bias = (i + s) % 2 == 0
        qw, w64 = _weight(spec, n, k, seed=i)
        x = randn(m, k, dtype=dtype, seed=1000 + 10 * i + s, device=device)
        b = randn(n, dtype=dtype, seed=2000 + i, device=device) if bias else None
        y = pq.ops.qmatmul(x, qw.to(device), bias=b, backend=backend)
        assert y.device == x.device
        xe = quantize_activations(x, qw.spec.act_block(k)) if qw.spec.act_bits else x
        assert_matmul_close(y, xe, w64, b, what=f"{backend} {spec} M={m} N={n} K={k} {dtype} bias={bias}", out_dtype=dtype)
        ran += 1
    assert ran > 0


def test_quantize_activations_definition():
    """Hand-worked blocks: s = max|x| / 127, round half to even, a ragged last block, an all-zero
    block, and a NaN or an Inf making its block NaN."""
    x = torch.tensor([[127.0, 62.5, 63.5, -0.5, -1.5, 2.49, 0.0, 0.0, 3.0, 1.0]])
    xh = quantize_activations(x, 4)  # blocks [0:4], [4:8], [8:10]
    assert torch.equal(xh[0, :4], torch.tensor([127.0, 62.0, 64.0, -0.0]))  # s = 1: ties to even
    s1, s2 = 2.49 / 127, 3.0 / 127  # -1.5 / s1 = -76.506 -> -77; 1 / s2 = 42.33 -> 42
    want = torch.tensor([-77 * s1, 127 * s1, 0.0, 0.0, 127 * s2, 42 * s2])
    assert torch.allclose(xh[0, 4:], want, rtol=1e-6, atol=0)
    assert torch.equal(quantize_activations(torch.zeros(2, 8), 4), torch.zeros(2, 8))
    y = quantize_activations(torch.tensor([[1.0, float("nan"), 2.0, 3.0, 1.0, 2.0]]), 3)
    assert torch.isnan(y[0, :3]).all() and torch.isfinite(y[0, 3:]).all()
    y = quantize_activations(torch.tensor([[1.0, float("inf"), 2.0]]), 3)
    assert torch.isnan(y).all()
    assert quantize_activations(randn(2, 3, 70, dtype=torch.bfloat16), 32).dtype == torch.float32


@pytest.mark.parametrize("device,backend", BACKENDS, ids=[f"{d}-{b}" for d, b in BACKENDS])
def test_3d_input_and_auto(device, backend):
    x = randn(2, 3, 72, seed=5, device=device)
    for spec in ("int4-g32", "int8"):
        qw = quantize_weight(randn(11, 72, seed=6), spec).to(device)
        y = pq.ops.qmatmul(x, qw, backend=backend)
        assert y.shape == (2, 3, 11)
        assert_matmul_close(y, x, qw.dequantize(torch.float64), what=f"{backend} {spec} 3-D")
    assert torch.equal(pq.ops.qmatmul(x, qw), pq.ops.qmatmul(x, qw, backend=pq.ops.backend_info()["qmatmul"]["auto"][device]))


needs_cpu = pytest.mark.skipif(not _native.cpu_available()[0], reason=str(_native.cpu_available()[1]))


@needs_cpu
@pytest.mark.parametrize("spec", ["int4-g64", "int8"])
@pytest.mark.parametrize("m", [1, 5, 40])
def test_cpu_thread_count_invariant(spec, m):
    """Each output is computed by one thread, so 1 and 3 threads give bit-identical results."""
    _C = _native.native()
    qw = quantize_weight(randn(77, 300, seed=7), spec)
    x = randn(m, 300, seed=8)
    ys = []
    for nt in (1, 3):
        y = torch.empty(m, 77)
        _C.qmatmul_cpu(x, qw.qweight, qw.scales, qw.zeros, None, qw.spec.bits, qw.spec.group_size or 0, 300, y, nt)
        ys.append(y)
    assert torch.equal(ys[0], ys[1])
    assert_matmul_close(ys[0], x, qw.dequantize(torch.float64), what=f"{spec} M={m}")


@needs_cpu
def test_cpu_strided_rows():
    """x and y rows may be further apart than a row (a column slice), the last dim contiguous."""
    _C = _native.native()
    qw = quantize_weight(randn(9, 100, seed=9), "int4-g32")
    for m in (3, 20):
        xbig = randn(m, 130, seed=10)
        ybig = torch.zeros(m, 16)
        x, y = xbig[:, 5:105], ybig[:, 2:11]
        _C.qmatmul_cpu(x, qw.qweight, qw.scales, qw.zeros, None, 4, 32, 100, y, 0)
        assert_matmul_close(y, x, qw.dequantize(torch.float64), what=f"strided M={m}")
        assert torch.all(ybig[:, :2] == 0) and torch.all(ybig[:, 11:] == 0)


@needs_cpu
@pytest.mark.parametrize("spec", ["int4-g32", "int4-g64", "int4-g128", "int4-g64-sym", "int4-g32-a8", "int4-g64-sym-a8",
                                  "int8"])
@pytest.mark.parametrize("k", [100, 576, 1000, 4096])
def test_cpu_rows_read_only_their_own_scales(spec, k):
    """The decode kernels read fp32 scales where they lie (no copy): a row's results must not
    depend on the next row's scales, which an Inf there would show (0 * Inf is NaN), even where
    the row ends in a partial block."""
    assert_rows_read_only_their_own_scales(quantize_weight(randn(10, k, seed=21), spec), what=spec)


@needs_cpu
def test_cpu_leading_dimensions():
    """The binding takes x[..., K] -> y[..., N] when the leading dimensions collapse into rows
    (contiguous, or a slice of whole rows), and names the problem when they do not; the public op
    makes such an x contiguous."""
    _C = _native.native()
    qw = quantize_weight(randn(9, 100, seed=9), "int4-g32")
    ref = qw.dequantize(torch.float64)
    w = _C.CpuWeight(qw.qweight, qw.scales, qw.zeros, 4, 32, 100)
    for shape in ((100,), (1, 1, 100), (2, 3, 100), (2, 1, 3, 100), (0, 4, 100), (2, 0, 100)):
        x = randn(*shape, seed=11)
        y = torch.full(shape[:-1] + (9,), float("nan"))
        w.matmul(x, None, y, 2)
        assert_matmul_close(y.reshape(-1, 9), x.reshape(-1, 100), ref, what=f"x{list(shape)}")
    t = randn(2, 4, 130, seed=12)
    x = t[:, :, 10:110]  # rows 130 apart, both leading dimensions collapse
    y = torch.empty(2, 4, 9)
    w.matmul(x, None, y, 1)
    assert_matmul_close(y.reshape(-1, 9), x.reshape(-1, 100), ref, what="row slice")
    x = t[:, 1:3, 10:110]  # rows 130 apart, the outer dimension 520 apart: no single row stride
    with pytest.raises(ValueError, match="x: leading dimensions must collapse"):
        w.matmul(x, None, torch.empty(2, 2, 9), 1)
    with pytest.raises(ValueError, match=r"y: expected shape \[2, 2, 9\]"):
        w.matmul(x.contiguous(), None, torch.empty(4, 9), 1)
    y = pq.ops.qmatmul(x, qw, backend="cpu")
    assert y.shape == (2, 2, 9)
    assert_matmul_close(y.reshape(-1, 9), x.reshape(-1, 100), ref, what="public op, non-collapsible x")


@needs_cpu
@pytest.mark.parametrize("m", [1, 3, 12])
def test_cpu_a8_rounds_ties_to_even(m):
    """x / s landing exactly on k + 1/2: the kernel's int8 activations round half to even, as the
    definition does; rounding half away from zero would be far outside the bound."""
    qw = quantize_weight(randn(16, 64, seed=1), "int4-g64-sym-a8")
    w64 = qw.dequantize(torch.float64)
    j = torch.arange(64) % 60 - 30
    x = ((j + 0.5) / 8).repeat(m, 1)  # s = 2^-3 exactly once a block holds 127 / 8
    x[:, 5] = 127 / 8
    x = x * torch.arange(1, m + 1)[:, None]  # s = 2^-3 * (row + 1): still ties
    y = pq.ops.qmatmul(x, qw, backend="cpu")
    xh = quantize_activations(x, 64)
    assert_matmul_close(y, xh, w64, what=f"a8 ties M={m}")
    s = x.abs().amax(-1, keepdim=True) / 127
    xa = torch.sign(x / s) * torch.floor((x / s).abs() + 0.5) * s  # ties away from zero
    assert not torch.equal(xa, xh)
    with pytest.raises(AssertionError):
        assert_matmul_close(y, xa, w64, what="half away from zero")


@needs_cpu
@pytest.mark.parametrize("spec", ["int4-g128-a8", "int8-a8"])
@pytest.mark.parametrize("m", [2, 10])
def test_cpu_a8_nonfinite_rows(spec, m):
    """A row of x holding a NaN or an Inf gives a row of NaN (as the reference does); the other
    rows are untouched."""
    qw, w64 = _weight(spec, 9, 300, seed=2)
    x = randn(m, 300, seed=3)
    x[0, 17] = float("nan")
    x[1, 250] = float("-inf")
    for backend in ("cpu", "reference"):
        y = pq.ops.qmatmul(x, qw, backend=backend)
        assert torch.isnan(y[:2]).all(), backend
        if m > 2:
            assert_matmul_close(y[2:], quantize_activations(x[2:], qw.spec.act_block(300)), w64, what=backend)


@needs_cpu
@pytest.mark.parametrize("m", [1, 5, 40])
def test_cpu_a8_thread_count_invariant(m):
    _C = _native.native()
    qw = quantize_weight(randn(77, 300, seed=7), "int4-g32-a8")
    x = randn(m, 300, seed=8)
    ys = []
    for nt in (1, 3):
        y = torch.empty(m, 77)
        _C.qmatmul_cpu(x, qw.qweight, qw.scales, qw.zeros, None, 4, 32, 300, y, nt, act_bits=8)
        ys.append(y)
    assert torch.equal(ys[0], ys[1])
    with pytest.raises(ValueError, match="activation bits"):
        _C.CpuWeight(qw.qweight, qw.scales, qw.zeros, 4, 32, 300, act_bits=4)


def _cpu_switch(switch: str, what: str):
    """A fixture handing the test pyquant._C.set_cpu_<switch> (process-wide), set back to "auto" after."""
    def fixture():
        setter = getattr(_native.native(), f"set_cpu_{switch}")
        yield setter
        setter("auto")
    fixture.__doc__ = f"Sets {what}; back to auto after."
    return pytest.fixture(fixture, name=f"cpu_{switch}")


cpu_codes = _cpu_switch("codes", "how the CPU decode kernels read weight codes (convert | subnormal)")
cpu_bf16_dot = _cpu_switch("bf16_dot", "whether INT4 decode takes bf16 x through AVX512-BF16 dot products")
cpu_bf16_gemm = _cpu_switch("bf16_gemm", "whether the prefill GEMM takes bf16 x through those dot products")
cpu_amx = _cpu_switch("amx", "whether the prefill GEMMs (weight-only and -a8) run on AMX tiles")
cpu_vnni = _cpu_switch("vnni", "whether the -a8 INT4 decode tile sums through AVX512-VNNI's vpdpbusd")


def _modes(setter, needs: str) -> list:
    """["off"], and "on" where this CPU has what the switch needs (elsewhere "on" must refuse,
    naming it)."""
    try:
        setter("on")
    except ValueError as e:
        assert needs in str(e)
        return ["off"]
    return ["off", "on"]


# the shapes the CPU decode kernels take: M <= 8, or M <= 24 with K >= 1024 (decode_max_m)
DECODE_SHAPES = [s for s in SHAPES if s[0] <= 8 or (s[0] <= 24 and s[2] >= 1024)]


@needs_cpu
@pytest.mark.parametrize("spec", SPECS)
def test_cpu_code_modes(cpu_codes, cpu_bf16_dot, spec):
    """Both ways of turning codes into floats, whatever this CPU defaults to. INT4's subnormal
    path scales every product by an exact power of two, so it must give the convert path's bits;
    INT8's (codes offset by 128) must match float64 as closely as any path. (bf16 dot products,
    which would take the bf16 rows past both: off here, tested below.)"""
    cpu_bf16_dot("off")
    for i, (m, n, k) in enumerate(DECODE_SHAPES):
        qw, w64 = _weight(spec, n, k, seed=i)
        x = randn(m, k, dtype=DTYPES[i % len(DTYPES)], seed=100 + i) * (10.0 ** (i % 5 - 2))
        ys = {}
        for mode in ("convert", "subnormal"):
            cpu_codes(mode)
            assert _native.native().cpu_codes() == mode
            ys[mode] = pq.ops.qmatmul(x, qw, backend="cpu")
            assert_matmul_close(ys[mode], x, w64, what=f"{mode} {spec} {m}x{n}x{k}")
        if qw.spec.bits == 4:
            assert torch.equal(ys["convert"], ys["subnormal"]), f"{spec} {m}x{n}x{k}"


@needs_cpu
@pytest.mark.parametrize("spec", ["int4-g128", "int8"])
def test_cpu_subnormal_codes_edge_activations(cpu_codes, spec):
    """Extreme activation scales, NaN/inf propagation, and flush-denormal mode (MXCSR.DAZ, which
    would read every subnormal code as zero unless the kernel clears it)."""
    qw, w64 = _weight(spec, 19, 600, seed=3)
    cpu_codes("subnormal")
    for scale in (1e-30, 1e-12, 1e12, 1e30):
        x = randn(3, 600, seed=4) * scale
        assert_matmul_close(pq.ops.qmatmul(x, qw, backend="cpu"), x, w64, what=f"{spec} x*{scale:g}")
    x = randn(2, 600, seed=5)
    x[0, 17] = float("nan")
    x[1, 3] = float("inf")
    y = pq.ops.qmatmul(x, qw, backend="cpu")
    assert torch.isnan(y[0]).all() and not torch.isfinite(y[1]).all()
    x = randn(4, 600, seed=6)
    y = pq.ops.qmatmul(x, qw, backend="cpu")
    torch.set_flush_denormal(True)
    try:
        y_daz = pq.ops.qmatmul(x, qw, backend="cpu")
    finally:
        torch.set_flush_denormal(False)
    assert torch.equal(y, y_daz)


def _strided_and_nonfinite(spec, dtype, strided_rows, nonfinite_rows, what: str):
    """A 19 x 600 weight on the CPU backend: x with rows further apart than K against float64 (on
    quantize_activations(x) for -a8 specs), and a NaN (row 0) and an inf (row 1) in x making their
    own rows non-finite (-a8: NaN) and no other."""
    qw, w64 = _weight(spec, 19, 600, seed=3)
    a8 = qw.spec.act_bits == 8
    for rows in strided_rows:
        x = randn(rows, 610, dtype=dtype, seed=4)[:, 5:605]
        ref = quantize_activations(x, qw.spec.act_block(600)) if a8 else x
        assert_matmul_close(pq.ops.qmatmul(x, qw, backend="cpu"), ref, w64, out_dtype=dtype,
                            what=f"{what} strided, {rows} rows")
    for rows in nonfinite_rows:
        x = randn(rows, 600, dtype=dtype, seed=5)
        x[0, 17] = float("nan")
        x[1, 3] = float("inf")
        y = pq.ops.qmatmul(x, qw, backend="cpu")
        assert torch.isnan(y[0]).all() and not torch.isfinite(y[1]).all(), (what, rows)
        assert not a8 or torch.isnan(y[1]).all(), (what, rows)
        assert torch.isfinite(y[2:]).all(), (what, rows)


@needs_cpu
@pytest.mark.parametrize("spec", SPECS)
def test_cpu_bf16_dot(cpu_bf16_dot, cpu_bf16_gemm, spec):
    """bf16 x through AVX512-BF16 dot products where this CPU has them (INT4 decode of 2 or more
    rows, codes as bf16 1 + c/16, two per lane; and, with the bf16-GEMM switch on, the prefill GEMM,
    INT4 and INT8, with code - z as bf16), and through fp32 multiply-adds: each way against float64
    at every shape, with activations from 1e-30 to 1e30 and NaN/inf propagating. Elsewhere "on"
    must refuse."""
    _C = _native.native()
    dots = _modes(cpu_bf16_dot, "AVX512-BF16")
    for mode, gemm in [("off", "off")] + [("on", g) for g in ("off", "on") if "on" in dots]:
        cpu_bf16_dot(mode)
        cpu_bf16_gemm(gemm)
        assert (_C.cpu_bf16_dot(), _C.cpu_bf16_gemm()) == (mode, gemm)
        mode = f"{mode} (gemm {gemm})"
        for i, (m, n, k) in enumerate(SHAPES):
            qw, w64 = _weight(spec, n, k, seed=i)
            x = randn(m, k, dtype=torch.bfloat16, seed=200 + i) * (10.0 ** (6 * (i % 11) - 30))
            b = randn(n, dtype=torch.bfloat16, seed=300 + i) if i % 2 else None
            y = pq.ops.qmatmul(x, qw, bias=b, backend="cpu")
            assert_matmul_close(y, x, w64, b, what=f"bf16 dot {mode} {spec} {m}x{n}x{k}")
        # the decode tile and the GEMM
        _strided_and_nonfinite(spec, torch.bfloat16, (3, 30), (2, 40), what=f"bf16 dot {mode} {spec}")


@needs_cpu
@pytest.mark.parametrize("spec", SPECS)
def test_cpu_amx(cpu_amx, spec):
    """The prefill GEMM on AMX tiles where this CPU has them (W's codes as bf16 integers, x as 1, 2
    or 3 bf16 terms for bf16, fp16 and fp32) and without: each against float64 at every shape and
    dtype, with activations from 1e-30 to 1e30, strided rows, a last row block of 1 to 32 rows,
    and NaN/inf propagating. Elsewhere "on" must refuse."""
    _C = _native.native()
    for mode in _modes(cpu_amx, "AMX-BF16"):
        cpu_amx(mode)
        assert _C.cpu_amx() == mode
        for i, (m, n, k) in enumerate(SHAPES + [(33, 70, 200), (48, 33, 4096)]):
            qw, w64 = _weight(spec, n, k, seed=i)
            dtype = DTYPES[i % len(DTYPES)]
            scale = 10.0 ** (6 * (i % 11) - 30) if dtype != torch.float16 else 10.0 ** (i % 5 - 2)
            x = randn(m, k, dtype=dtype, seed=600 + i) * scale
            b = randn(n, dtype=dtype, seed=700 + i) if i % 2 else None
            y = pq.ops.qmatmul(x, qw, bias=b, backend="cpu")
            assert_matmul_close(y, x, w64, b, what=f"amx {mode} {spec} {m}x{n}x{k} {dtype}")
        for dtype in DTYPES:
            _strided_and_nonfinite(spec, dtype, (30,), (40,), what=f"amx {mode} {spec} {dtype}")


@needs_cpu
@pytest.mark.parametrize("spec", A8_SPECS)
def test_cpu_amx_a8(cpu_amx, spec):
    """-a8 past the decode kernels' rows on AMX-INT8 tiles where this CPU has them (code - z or the
    int8 code times x's int8 codes, s32 sums per group, groups of 32 as half tiles past 56 rows)
    and without: against float64 on quantize_activations(x) at every shape past 8 rows plus five
    more (K up to 8192, ragged groups, last row blocks of 1 to 32 rows), activations from 1e-3 to
    1e3, strided x, and a NaN or an inf making its own row NaN and no other; INT8 past the K that
    whole-K s32 sums hold. INT4's s32 sums and scale products are the VNNI GEMM's, added in the
    same order: the same bits wherever that GEMM runs."""
    _C = _native.native()
    shapes = [s for s in SHAPES if s[0] > 8] + [(33, 70, 200), (48, 33, 4096), (17, 33, 96), (40, 20, 8192),
                                                (60, 37, 1000)]
    modes = _modes(cpu_amx, "AMX-INT8")
    ys = {}
    for mode in modes:
        cpu_amx(mode)
        for i, (m, n, k) in enumerate(shapes):
            qw, w64 = _weight(spec, n, k, seed=i)
            dtype = DTYPES[i % len(DTYPES)]
            x = randn(m, k, dtype=dtype, seed=800 + i) * 10.0 ** (i % 7 - 3)
            b = randn(n, dtype=dtype, seed=900 + i) if i % 2 else None
            ys[mode, i] = pq.ops.qmatmul(x, qw, bias=b, backend="cpu")
            assert_matmul_close(ys[mode, i], quantize_activations(x, qw.spec.act_block(k)), w64, b, out_dtype=dtype,
                                what=f"amx {mode} {spec} {m}x{n}x{k} {dtype}")
        _strided_and_nonfinite(spec, torch.float32, (30,), (40,), what=f"amx {mode} {spec}")
        if qw.spec.bits == 8:  # every code 127 and K past what whole-K s32 sums hold (AMX hands it on)
            qw = quantize_weight(torch.ones(3, 140000), spec)
            x = torch.ones(40, 140000)
            assert_matmul_close(pq.ops.qmatmul(x, qw, backend="cpu"), quantize_activations(x, qw.spec.act_block(140000)),
                                qw.dequantize(torch.float64), what=f"amx {mode} {spec} K=140000")
    if "on" in modes and qw.spec.bits == 4 and _C.cpu_vnni() == "on":
        for i, (m, n, k) in enumerate(shapes):
            if m > (16 if k >= 1024 else 8):  # past the INT4 decode tile: the VNNI GEMM
                assert torch.equal(ys["on", i], ys["off", i]), f"{spec} {m}x{n}x{k}"


@needs_cpu
def test_cpu_amx_default():
    """AMX is on by default where the CPU reports AMX-BF16, AMX-INT8 and AMX-TILE (and the OS grants
    the tile state), and off, refusing "on", where it does not."""
    _C = _native.native()
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    if not all(f in flags for f in ("amx_bf16", "amx_tile", "amx_int8")) or _C.cpu_isa() != "avx512":
        assert _C.cpu_amx() == "off"
        with pytest.raises(ValueError, match="AMX-BF16"):
            _C.set_cpu_amx("on")
    elif os.environ.get("PYQUANT_AMX") != "0":
        assert _C.cpu_amx() == "on"


@needs_cpu
@pytest.mark.parametrize("spec", A8_SPECS)
def test_cpu_vnni(cpu_vnni, spec):
    """-a8 through AVX512-VNNI's vpdpbusd (where this CPU has it) and without: the INT4 decode
    tile (M <= 8, or <= 16 when K >= 1024) must give the same bits either way (its integer sums
    are exact), and the INT8 decode tile and the integer GEMM that VNNI enables (INT8 at every
    size, INT4 past the tile's rows) float64's values, as the fp32 path they replace does, at
    every shape. Elsewhere "on" must refuse."""
    _C = _native.native()
    modes = _modes(cpu_vnni, "AVX512-VNNI")
    for i, (m, n, k) in enumerate(SHAPES):
        qw, w64 = _weight(spec, n, k, seed=i)
        x = randn(m, k, dtype=DTYPES[i % len(DTYPES)], seed=400 + i) * (10.0 ** (i % 5 - 2))
        b = randn(n, dtype=x.dtype, seed=500 + i) if i % 2 else None
        xe = quantize_activations(x, qw.spec.act_block(k))
        ys = {}
        for mode in modes:
            cpu_vnni(mode)
            assert _C.cpu_vnni() == mode
            ys[mode] = pq.ops.qmatmul(x, qw, bias=b, backend="cpu")
            assert_matmul_close(ys[mode], xe, w64, b, out_dtype=x.dtype, what=f"vnni {mode} {spec} {m}x{n}x{k}")
        if "on" in ys and qw.spec.bits == 4 and (m <= 8 or (m <= 16 and k >= 1024)):  # the decode tile
            assert torch.equal(ys["on"], ys["off"]), f"{spec} {m}x{n}x{k}"


@needs_cpu
def test_cpu_bf16_gemm_default():
    """The prefill GEMM's bf16 dot products are on by default on AMD CPUs only (where they run
    1.8-2.1x the fp32 GEMM; 0.70-0.78x on an Intel Xeon), and never without the bf16 dot path."""
    _C = _native.native()
    with open("/proc/cpuinfo") as f:
        amd = "AuthenticAMD" in f.read()
    assert _C.cpu_bf16_gemm() == ("on" if amd and _C.cpu_bf16_dot() == "on" else "off")


@needs_cpu
@pytest.mark.parametrize("switch,what", [("bf16_dot", "bf16 dot"), ("bf16_gemm", "bf16 gemm"), ("vnni", "vnni"),
                                         ("amx", "amx")])
def test_cpu_switch_bad_mode(switch, what):
    _C = _native.native()
    with pytest.raises(ValueError, match=f"unknown {what} mode"):
        getattr(_C, f"set_cpu_{switch}")("yes")
    assert getattr(_C, f"cpu_{switch}")() in ("on", "off")


@needs_cpu
def test_cpu_codes_bad_mode():
    with pytest.raises(ValueError, match="unknown code mode"):
        _native.native().set_cpu_codes("fast")
    assert _native.native().cpu_codes() in ("convert", "subnormal")


FORCED_ISA_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, sys.argv[1])
    import pyquant as pq
    from pyquant.ops import _native
    from pyquant.ops.reference import quantize_activations
    from pyquant.quant.rtn import quantize_weight
    from helpers import assert_matmul_close, randn
    assert _native.native().cpu_isa() == sys.argv[2], _native.native().cpu_isa()
    cases = ((1, 7, 300, torch.float32), (1, 3, 96, torch.float32), (6, 5, 129, torch.bfloat16),
             (19, 37, 520, torch.float32))
    for mode in ("convert", "subnormal"):
        _native.native().set_cpu_codes(mode)
        # every INT4 group layout of the decode loop (qmatmul_kernels.h, GroupLayout) at 8 lanes:
        # g32 < 8W, g64 = 8W, g128 = 16W, g256 > 16W
        for spec in ("int8", "int4-g32", "int4-g64", "int4-g128-sym-fp16", "int4-g256", "int4-g32-a8",
                     "int4-g128-a8"):
            for (m, n, k, dt) in cases:
                qw = quantize_weight(randn(n, k, seed=k), spec)
                x, b = randn(m, k, dtype=dt, seed=m), randn(n, dtype=dt, seed=n)
                y = pq.ops.qmatmul(x, qw, bias=b, backend="cpu")
                xe = quantize_activations(x, qw.spec.act_block(k)) if qw.spec.act_bits else x
                assert_matmul_close(y, xe, qw.dequantize(torch.float64), b,
                                    what=f"{sys.argv[2]} {mode} {spec} {m} {n} {k} {dt}", out_dtype=dt)
    print(sys.argv[2], "ok")
""")

_ISAS = ("scalar", "avx2", "avx512")


PARTIAL_GROUPS_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from pyquant.ops import _native
    from pyquant.quant.rtn import quantize_weight
    from helpers import assert_rows_read_only_their_own_scales, randn
    assert _native.native().cpu_isa() == sys.argv[2], _native.native().cpu_isa()
    for spec in ("int4-g128", "int4-g128-sym"):
        for ng in range(1, 18):  # every remainder of ng groups at 8 and at 16 lanes
            k = 128 * ng - 3 * (ng % 2)  # and ragged last groups
            assert_rows_read_only_their_own_scales(quantize_weight(randn(10, k, seed=ng), spec), seed=1,
                                                   what=f"{sys.argv[2]} {spec}")
    print(sys.argv[2], "ok")
""")


def _run_with_isa(script: str, isa: str) -> None:
    """Run ``script`` (argv: the tests directory, isa) in a fresh process with PYQUANT_ISA=isa; it must
    print "<isa> ok"."""
    env = dict(os.environ, PYQUANT_ISA=isa, OMP_NUM_THREADS="2")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", script, here, isa], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and f"{isa} ok" in r.stdout, r.stdout + r.stderr


@needs_cpu
@pytest.mark.parametrize("isa", _ISAS)
def test_cpu_zero_point_terms_of_partial_vectors(isa):
    """The INT4 decode kernels sum a row's zero-point terms W groups at a time, reading its fp32
    scales and zero-points where they lie and the last ng % W groups by masked loads (AVX2: two
    overlapping loads of the zero-point bytes): every remainder at 8 and 16 lanes, at M = 1 and 3,
    with the next row's scales Inf, which a read past a row's own would turn into NaN."""
    best = _native.native().cpu_isa()
    if isa not in _ISAS[:_ISAS.index(best) + 1]:
        pytest.skip(f"{isa} is above this CPU's ISA ({best})")
    _run_with_isa(PARTIAL_GROUPS_SCRIPT, isa)


@needs_cpu
@pytest.mark.parametrize("isa", _ISAS[:2])
def test_cpu_lower_isa_path(isa):
    """The kernels of an ISA below this CPU's best (PYQUANT_ISA lowers it) in a fresh process: the
    scalar ones everywhere, the AVX2 ones on an AVX-512 CPU, where the default path never runs them."""
    best = _native.native().cpu_isa()
    if isa not in _ISAS[:_ISAS.index(best)]:
        pytest.skip(f"{isa} is this CPU's own ISA ({best}) or above it: the other tests run it or cannot")
    _run_with_isa(FORCED_ISA_SCRIPT, isa)


THREADS_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, sys.argv[1])
    import pyquant as pq
    from pyquant.ops.reference import quantize_activations
    from pyquant.quant.rtn import quantize_weight
    from helpers import assert_matmul_close, randn
    torch.set_num_threads(int(sys.argv[2]))
    for spec in ("int8", "int4-g128", "int4-g32-a8", "int8-a8"):
        for (m, n, k) in ((1, 1, 64), (2, 9, 128), (1, 37, 256), (5, 1001, 130)):
            qw = quantize_weight(randn(n, k, seed=n), spec)
            x = randn(m, k, seed=m)
            y = pq.ops.qmatmul(x, qw, backend="cpu")
            xe = quantize_activations(x, qw.spec.act_block(k)) if qw.spec.act_bits else x
            assert_matmul_close(y, xe, qw.dequantize(torch.float64), None, what=f"{spec} {m} {n} {k}")
    print("threads ok")
""")


@needs_cpu
@pytest.mark.parametrize("threads,limit", [(3, None), (3, "1"), (2, "1")])
def test_cpu_decode_tiles_whichever_threads_join(threads, limit):
    """The decode kernels split their row tiles into one range per requested thread and let threads
    take tiles from the others' ranges: every tile is computed once with more threads than cores and
    when OpenMP starts fewer threads than asked (OMP_THREAD_LIMIT), where one thread takes them all."""
    env = dict(os.environ)
    env.pop("OMP_THREAD_LIMIT", None)
    if limit:
        env["OMP_THREAD_LIMIT"] = limit
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, here, str(threads)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "threads ok" in r.stdout, r.stdout + r.stderr


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", BACKENDS, ids=[f"{d}-{b}" for d, b in BACKENDS])
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "after-a-call"])
def test_bad_input_public(device, backend, warm):
    """Every bad input raises, also once the weight has a cached runner (the eager fast path)."""
    qw = quantize_weight(randn(8, 64, seed=1), "int4-g32").to(device)
    x = randn(2, 64, device=device)
    if warm:
        pq.ops.qmatmul(x, qw, backend=backend)
    with pytest.raises(ValueError, match="last dimension"):
        pq.ops.qmatmul(randn(2, 63, device=device), qw, backend=backend)
    with pytest.raises(ValueError, match="last dimension"):
        pq.ops.qmatmul(torch.tensor(1.0, device=device), qw, backend=backend)
    with pytest.raises(ValueError, match="dtype"):
        pq.ops.qmatmul(torch.ones(2, 64, dtype=torch.int32, device=device), qw, backend=backend)
    with pytest.raises(ValueError, match="dtype"):
        pq.ops.qmatmul(x.double(), qw, backend=backend)
    with pytest.raises(ValueError, match="bias"):
        pq.ops.qmatmul(x, qw, bias=randn(7, device=device), backend=backend)
    with pytest.raises(ValueError, match="on meta"):
        pq.ops.qmatmul(torch.empty(2, 64, device="meta"), qw, backend=backend)
    with pytest.raises(ValueError, match="QuantizedWeight"):
        pq.ops.qmatmul(x, torch.ones(8, 64, device=device), backend=backend)
    with pytest.raises(ValueError, match="unknown backend"):
        pq.ops.qmatmul(x, qw, backend="no-such-backend")


def test_bad_group_size():
    with pytest.raises(ValueError, match="group size"):
        pq.QuantSpec.parse("int4-g48")
    with pytest.raises(ValueError, match="group size"):
        pq.QuantSpec(bits=4, group_size=16)


@needs_cpu
def test_bad_input_binding():
    """The C++ binding validates every array itself (dtype, shape, layout, group size)."""
    _C = _native.native()
    qw = quantize_weight(randn(8, 64, seed=1), "int4-g32")
    x, y = randn(2, 64), torch.empty(2, 8)

    def call(x=x, q=qw.qweight, s=qw.scales, z=qw.zeros, b=None, bits=4, g=32, k=64, y=y):
        _C.qmatmul_cpu(x, q, s, z, b, bits, g, k, y, 1)

    call()  # the good call works
    with pytest.raises(ValueError, match="x: last dimension"):
        call(x=randn(2, 65))
    with pytest.raises(ValueError, match=r"qweight: expected shape \[8, 48\]"):  # in_features 65: 3 groups
        call(k=65)
    with pytest.raises(ValueError, match="group size"):
        call(g=48)
    with pytest.raises(ValueError, match="bit width"):
        call(bits=3)
    with pytest.raises(ValueError, match="x: unsupported dtype"):
        call(x=torch.ones(2, 64, dtype=torch.int32))
    with pytest.raises(ValueError, match="x: the last dimension must be contiguous"):
        call(x=randn(64, 2).T)
    with pytest.raises(ValueError, match="qweight: unsupported dtype"):
        call(q=qw.qweight.to(torch.int8))
    with pytest.raises(ValueError, match="qweight: expected shape"):
        call(q=qw.qweight[:, :16].contiguous())
    with pytest.raises(ValueError, match="scales: expected shape"):
        call(s=qw.scales[:7])
    with pytest.raises(ValueError, match="scales: unsupported dtype"):
        call(s=qw.scales.double())
    with pytest.raises(ValueError, match="zeros: expected shape"):
        call(z=qw.zeros[:, :1].contiguous())
    with pytest.raises(ValueError, match="bias: unsupported dtype"):
        call(b=randn(8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="bias: expected shape"):
        call(b=randn(9))
    with pytest.raises(ValueError, match="y: unsupported dtype"):
        call(y=torch.empty(2, 8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="y: expected shape"):
        call(y=torch.empty(3, 8))
    with pytest.raises(ValueError, match="expected an array"):
        call(x=[[1.0] * 64])
    q8 = quantize_weight(randn(8, 64, seed=1), "int8")
    with pytest.raises(ValueError, match="zeros: int8"):
        call(q=q8.qweight, s=q8.scales, z=qw.zeros, bits=8, g=0)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="must be on the CPU"):
            call(x=x.cuda())


@needs_cpu
def test_numpy_arrays_through_buffer_protocol():
    np = pytest.importorskip("numpy")
    _C = _native.native()
    qw = quantize_weight(randn(5, 96, seed=2), "int4-g64")
    x = randn(3, 96, seed=3)
    y = np.zeros((3, 5), dtype=np.float32)
    _C.qmatmul_cpu(x.numpy(), qw.qweight.numpy(), qw.scales.numpy(), qw.zeros.numpy(), None, 4, 64, 96, y, 1)
    assert_matmul_close(torch.from_numpy(y), x, qw.dequantize(torch.float64), what="numpy")


@pytest.mark.parametrize("device,backend", BACKENDS, ids=[f"{d}-{b}" for d, b in BACKENDS])
def test_custom_op_matches_eager(device, backend):
    """torch.ops.pyquant.qmatmul (what torch.compile traces) gives what the eager call gives."""
    qw = quantize_weight(randn(13, 96, seed=4), "int4-g32").to(device)
    x = randn(3, 96, seed=5, device=device)
    b = randn(13, seed=6, device=device)
    y_op = torch.ops.pyquant.qmatmul(x, qw.qweight, qw.scales, qw.zeros, b, 4, 32, 96, backend)
    assert torch.equal(y_op, pq.ops.qmatmul(x, qw, bias=b, backend=backend))
    # -a8 (act_bits=8): the same path as the eager call (the CPU kernel's integer one, else x
    # quantized by the op, then the weight-only kernel), so the same bits
    qa = pq.formats.QuantizedWeight(pq.QuantSpec.parse("int4-g32-a8"), qw.qweight, qw.scales, qw.zeros, qw.shape)
    y_op = torch.ops.pyquant.qmatmul(x, qw.qweight, qw.scales, qw.zeros, b, 4, 32, 96, backend, 8)
    assert torch.equal(y_op, pq.ops.qmatmul(x, qa, bias=b, backend=backend))
    assert_matmul_close(y_op, quantize_activations(x, 32), qw.dequantize(torch.float64), b, what="op a8",
                        out_dtype=x.dtype)


@needs_cpu
def test_cpu_weight_handle():
    """_C.CpuWeight checks a weight once, keeps its arrays alive, and serves many calls."""
    import gc

    _C = _native.native()
    qw = quantize_weight(randn(11, 200, seed=7), "int4-g64")
    ref = qw.dequantize(torch.float64)
    w = _C.CpuWeight(qw.qweight.clone(), qw.scales.clone(), qw.zeros.clone(), 4, 64, 200)
    gc.collect()  # the clones are owned by the handle alone now
    assert (w.out_features, w.in_features) == (11, 200)
    for m, seed in ((1, 8), (6, 9), (20, 10)):
        x = randn(m, 200, seed=seed)
        y = torch.empty(m, 11)
        w.matmul(torch.utils.dlpack.to_dlpack(x), None, y, 1)  # a bare capsule is an array too
        assert_matmul_close(y, x, ref, what=f"CpuWeight M={m}")
    with pytest.raises(ValueError, match="x: last dimension"):
        w.matmul(randn(1, 199), None, torch.empty(1, 11))
    with pytest.raises(ValueError, match="scales: expected shape"):
        _C.CpuWeight(qw.qweight, qw.scales[:, :2], qw.zeros, 4, 64, 200)
    with pytest.raises(ValueError, match="in_features must be positive"):
        _C.CpuWeight(qw.qweight, qw.scales, qw.zeros, 4, 64, 0)


@pytest.mark.parametrize("device,backend", BACKENDS, ids=[f"{d}-{b}" for d, b in BACKENDS])
def test_cached_runner_follows_the_weight(device, backend):
    """qmatmul caches a prepared runner per weight: it must see every change to the weight's tensors
    (in place, .data swapped, attribute replaced) and survive pickling and deepcopy."""
    import copy
    import pickle

    a = quantize_weight(randn(9, 96, seed=11), "int4-g32").to(device)
    b = quantize_weight(randn(9, 96, seed=12), "int4-g32").to(device)
    x = randn(2, 96, seed=13, device=device)
    y_b = pq.ops.qmatmul(x, b, backend=backend)
    qw = copy.deepcopy(a)

    def check():  # against a fresh QuantizedWeight (no cache) over the same tensors
        fresh = pq.QuantizedWeight(qw.spec, qw.qweight.clone(), qw.scales.clone(), qw.zeros.clone(), qw.shape)
        assert torch.equal(pq.ops.qmatmul(x, qw, backend=backend), pq.ops.qmatmul(x, fresh, backend=backend))

    check()  # fills the cache
    qw.qweight.copy_(b.qweight)  # in place
    check()
    qw.scales.data = b.scales.clone()  # same Python object, new storage
    check()
    qw.zeros = b.zeros.clone()  # a new object
    check()
    assert torch.equal(pq.ops.qmatmul(x, qw, backend=backend), y_b)
    for clone in (copy.deepcopy(qw), pickle.loads(pickle.dumps(qw.to("cpu")))):
        assert torch.equal(pq.ops.qmatmul(x.to(clone.device), clone, backend=backend).to(device), y_b)


@pytest.mark.parametrize("spec", ["int4-g32", "int8", "int4-g64-sym-a8"])
@pytest.mark.parametrize("device,backend", BACKENDS, ids=[f"{d}-{b}" for d, b in BACKENDS])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_grouped_matches_float64(device, backend, spec, compiled):
    """grouped_qmatmul: rows in groups of counts[e] (some empty, rows left over) through weight e, its
    columns gathered by in_perms[e] where given, vs the float64 product per group; zeros past the
    groups. Compiled: one op (pyquant::grouped_qmatmul) in a fullgraph torch.compile."""
    from pyquant.ops.qmatmul import grouped_qmatmul

    n, k, counts = 13, 100, torch.tensor([3, 0, 9, 1, 0])
    qws = [quantize_weight(randn(n, k, seed=40 + e), spec).to(device) for e in range(len(counts))]
    perms = [None, None, torch.randperm(k, generator=torch.Generator().manual_seed(3)).to(device), None, None]
    x = randn(int(counts.sum()) + 2, k, seed=41, device=device)  # two rows of no group
    run = functools.partial(grouped_qmatmul, qws=qws, in_perms=perms, backend=backend)
    if compiled:
        torch._dynamo.reset()
        run = torch.compile(run, fullgraph=True, backend="eager")
    y = run(x, counts.to(device))
    assert y.shape == (x.shape[0], n) and y.dtype == x.dtype
    start = 0
    for e, c in enumerate(counts.tolist()):
        xe = x[start:start + c]
        if perms[e] is not None:
            xe = xe[:, perms[e]]
        if qws[e].spec.act_bits:
            xe = quantize_activations(xe, qws[e].spec.act_block(k)).float()
        assert_matmul_close(y[start:start + c], xe, qws[e].dequantize(torch.float64), what=f"{backend} group {e}")
        start += c
    assert not y[start:].any()


def test_grouped_bad_input():
    from pyquant.ops.qmatmul import grouped_qmatmul

    qws = [quantize_weight(randn(5, 64, seed=e), "int4-g32") for e in range(2)]
    x = randn(4, 64)
    cases = [
        (lambda: grouped_qmatmul(x, torch.tensor([1, 1]), []), "no weights"),
        (lambda: grouped_qmatmul(x, torch.tensor([1, 1]), [qws[0], quantize_weight(randn(5, 64), "int8")]), "one spec"),
        (lambda: grouped_qmatmul(x[None], torch.tensor([1, 1]), qws), r"\[rows, K\]"),
        (lambda: grouped_qmatmul(randn(4, 60), torch.tensor([1, 1]), qws), "K=64"),
        (lambda: grouped_qmatmul(x, torch.tensor([1, 1, 1]), qws), "2 integers"),
        (lambda: grouped_qmatmul(x, torch.tensor([1.0, 1.0]), qws), "2 integers"),
        (lambda: grouped_qmatmul(x, torch.tensor([3, 2]), qws), "do not fit"),
        (lambda: grouped_qmatmul(x, torch.tensor([-1, 2]), qws), "do not fit"),
        (lambda: grouped_qmatmul(x, torch.tensor([1, 1]), qws, in_perms=[None]), "1 in_perms for 2"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
