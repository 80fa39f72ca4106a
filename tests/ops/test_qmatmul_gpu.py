"""GPU-side qmatmul checks the shared harness (tests/ops/test_qmatmul.py) cannot make.

* Triton: both inner-product paths (``tl.dot`` tiles and the decode multiply-reduce) on awkward
  shapes, whatever tiling the default heuristic would pick; bad input raises ValueError through
  the public op.
* CUDA binding: rejects host arrays with a ValueError (runs wherever the extension has CUDA).
* CUDA kernel: against float64 on a GPU (skipped without one): every format, M = 1..8 and the
  sliced M > 8 path, ragged K, unaligned rows (scalar-load fallback), bias, fp16 scales, a
  non-default stream.
"""
import pytest
import torch

import pyquant as pq
from pyquant.ops import _native
from pyquant.ops._registry import resolve
from pyquant.quant.rtn import quantize_weight

from helpers import assert_matmul_close, randn

HAS_GPU = torch.cuda.is_available()
TRITON_OK = _native.triton_available()[0]


def _case(spec, m, n, k, dtype, device="cpu", bias=True, seed=0):
    qw = quantize_weight(randn(n, k, seed=seed), spec).to(device)
    x = randn(m, k, dtype=dtype, seed=seed + 1, device=device)
    b = randn(n, dtype=dtype, seed=seed + 2, device=device) if bias else None
    return x, qw, b


def _assert_close(y, x, qw, b, what=""):
    assert_matmul_close(y, x, qw.dequantize(torch.float64), b, what=what)


# ---- Triton (runs under TRITON_INTERPRET=1 on the CPU) -----------------------------------------
needs_triton = pytest.mark.skipif(not TRITON_OK, reason=_native.triton_available()[1])
TRITON_DEVICE = "cuda" if HAS_GPU else "cpu"


@needs_triton
@pytest.mark.parametrize("use_dot", [False, True], ids=["reduce", "dot"])
@pytest.mark.parametrize("spec,m,n,k,dtype", [
    ("int8", 3, 19, 70, torch.float32),
    ("int8-fp16", 17, 21, 45, torch.bfloat16),
    ("int4-g32", 2, 33, 97, torch.float16),
    ("int4-g64-sym", 18, 7, 130, torch.float32),
    ("int4-g128-fp16", 5, 40, 300, torch.bfloat16),
    ("int4-g256-sym", 1, 9, 257, torch.float32),
])
def test_triton_tilings(spec, m, n, k, dtype, use_dot):
    """Both inner products agree with float64 on ragged K, N and M tails, small and large blocks."""
    from pyquant.kernels import qmatmul as kq

    x, qw, b = _case(spec, m, n, k, dtype, TRITON_DEVICE, bias=(m % 2 == 1))
    g = qw.spec.group_size or 0
    bk = min(g, 32) if g else 32
    cfg = dict(BLOCK_M=16 if use_dot else 4, BLOCK_N=16, BLOCK_K=bk, USE_DOT=use_dot)
    y = kq.qmatmul(x, qw.qweight, qw.scales, qw.zeros, b, qw.spec.bits, g, k,
                   interpret=not HAS_GPU, **cfg)
    _assert_close(y, x, qw, b, what=f"triton {spec} M={m} N={n} K={k} {dtype} {cfg}")


@needs_triton
def test_triton_row_slices_and_strided_x():
    """A QuantizedWeight.rows() view and an x with a row stride > K go through without copies."""
    x, qw, b = _case("int4-g32", 6, 24, 80, torch.float32, TRITON_DEVICE)
    part = qw.rows(5, 17)
    xs = torch.randn(6, 100, device=TRITON_DEVICE)[:, 7:87]
    y = pq.ops.qmatmul(xs, part, b[5:17], backend="triton")
    _assert_close(y, xs, part, b[5:17])


@needs_triton
@pytest.mark.parametrize("backend", ["triton"] + (["cuda"] if HAS_GPU and _native.cuda_available()[0] else []))
def test_gpu_backends_reject_bad_input(backend):
    """Bad input raises ValueError naming the problem, through the public op and the backend function."""
    dev = TRITON_DEVICE if backend == "triton" else "cuda"
    x, qw, _ = _case("int4-g64", 2, 8, 128, torch.float32, dev)
    with pytest.raises(ValueError, match="last dimension"):
        pq.ops.qmatmul(x[:, :100], qw, backend=backend)
    with pytest.raises(ValueError, match="dtype"):
        pq.ops.qmatmul(x.to(torch.float64), qw, backend=backend)
    with pytest.raises(ValueError, match="bias"):
        pq.ops.qmatmul(x, qw, torch.zeros(7, device=dev), backend=backend)
    fn = resolve("qmatmul", dev, backend).fn
    args = (x, qw.qweight, qw.scales, qw.zeros, None)
    with pytest.raises(ValueError, match="group size"):
        fn(*args, 4, 48, 128)
    with pytest.raises(ValueError, match="bit width"):
        fn(*args, 3, 64, 128)
    with pytest.raises(ValueError, match="in_features"):
        fn(*args, 4, 64, 120)
    with pytest.raises(ValueError, match="zeros"):
        fn(x, qw.qweight, qw.scales, qw.zeros[:, :1], None, 4, 64, 128)
    with pytest.raises(ValueError, match="qweight"):
        fn(x, qw.qweight.view(torch.int8), qw.scales, qw.zeros, None, 4, 64, 128)
    with pytest.raises(ValueError, match="scales"):
        fn(x, qw.qweight, qw.scales.double(), qw.zeros, None, 4, 64, 128)
    with pytest.raises(ValueError, match="2-D"):
        fn(x[0], qw.qweight, qw.scales, qw.zeros, None, 4, 64, 128)


# ---- CUDA ---------------------------------------------------------------------------------------
C = _native.native()
built_with_cuda = C is not None and C.built_with_cuda()


@pytest.mark.skipif(not built_with_cuda, reason="pyquant._C was built without CUDA")
def test_cuda_binding_rejects_host_arrays():
    """The binding checks devices before touching the GPU: host tensors raise ValueError, anywhere."""
    x, qw, _ = _case("int4-g32", 1, 8, 64, torch.float32)
    y = torch.empty(1, 8)
    with pytest.raises(ValueError, match="CUDA"):
        C.qmatmul_cuda(x, qw.qweight, qw.scales, qw.zeros, None, y, 4, 32, 64, 0)


needs_cuda = pytest.mark.skipif(not (HAS_GPU and _native.cuda_available()[0]),
                                reason="needs a CUDA device and pyquant._C built with CUDA")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spec", ["int8", "int8-fp16", "int4-g32", "int4-g64-sym", "int4-g128", "int4-g256-fp16"])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8])
def test_cuda_decode(spec, m, dtype):
    """Decode shapes: odd N, K with tails in every chunk size and ragged last groups."""
    for n, k in ((67, 576), (33, 1000), (5, 4097)):
        x, qw, b = _case(spec, m, n, k, dtype, "cuda", bias=(n % 2 == 1), seed=m + n)
        _assert_close(pq.ops.qmatmul(x, qw, b, backend="cuda"), x, qw, b, what=f"cuda {spec} M={m} N={n} K={k} {dtype}")


@needs_cuda
@pytest.mark.parametrize("spec", ["int8", "int4-g64"])
def test_cuda_kernel_sliced_large_m_and_unaligned(spec):
    """M > 8 straight through the binding (row slices of 8), x rows and weight rows not 16-byte aligned."""
    x, qw, b = _case(spec, 13, 45, 200, torch.bfloat16, "cuda")
    xs = torch.zeros(13, 203, dtype=x.dtype, device="cuda")[:, 1:201]  # row stride 203: unaligned
    xs.copy_(x)
    y = torch.empty(13, 45, dtype=x.dtype, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        C.qmatmul_cuda(xs, qw.qweight, qw.scales, qw.zeros, b, y, qw.spec.bits, qw.spec.group_size or 0, 200,
                       stream.cuda_stream)
    stream.synchronize()
    _assert_close(y, x, qw, b)
    part = qw.rows(3, 40)  # int8 rows of 200 bytes: the scalar-load fallback
    _assert_close(pq.ops.qmatmul(xs[:4], part, backend="cuda"), x[:4], part, None)
