"""GPU-side qmatmul checks the shared harness (tests/ops/test_qmatmul.py) cannot make.

* Triton: both inner-product paths (``tl.dot`` tiles and the decode multiply-reduce) on awkward
  shapes, whatever tiling the default heuristic would pick; bad input raises ValueError through
  the public op.
* CUDA binding: rejects host arrays with a ValueError (runs wherever the extension has CUDA).
* CUDA backend's prepared runner: a bad weight fails at prepare, each x is checked per call.
* CUDA kernel, simulated: csrc/cuda/qmatmul_kernel.cuh compiled for the host with a warp
  simulator (32 threads per warp, shuffles through a barrier), so its indexing, nibble order,
  ragged K, tails, alignment fallbacks and M slicing are checked on machines without a GPU.
* CUDA kernel: against float64 on a GPU (skipped without one): every format, M = 1..8 and the
  sliced M > 8 path, ragged K, unaligned rows (scalar-load fallback), bias, fp16 scales, a
  non-default stream.
"""
import ctypes
import os
import shutil
import subprocess
import sys

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


_COMPILE_AHEAD = """
import sys
from pyquant.kernels import qmatmul as kq
for case in sys.argv[1:]:
    arch, m, bits, g, xd = case.split(",")
    cfg = kq.block_config(int(m), 4096, 4096, int(bits), int(g), interpret=False)
    try:
        k = kq.compile_ahead(int(arch), cfg, xd, int(bits), int(g), has_zeros=int(bits) == 4, has_bias=True)
    except (ImportError, FileNotFoundError) as e:
        print("SKIP", e)
        raise SystemExit(0)
    assert len(k.asm["cubin"]) > 0, case
    print("SHARED", case, k.metadata.shared)
"""


@needs_triton
@pytest.mark.parametrize("cases", [
    ["90,1,4,128,bf16", "90,512,4,128,fp16"],  # decode (multiply-reduce), prefill (tl.dot)
    pytest.param(["80,4,8,0,fp32", "90,64,8,0,fp32", "80,8,4,32,fp16", "80,16,4,256,bf16"], marks=pytest.mark.slow),
], ids=["fast", "more"])
def test_triton_kernel_compiles_for_gpus(cases):
    """What the interpreter runs also builds for sm_80 / sm_90 with the tilings a GPU call would use
    (no GPU needed: Triton's bundled ptxas; in a subprocess, as the interpreter owns the kernel here)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, "-c", _COMPILE_AHEAD, *cases], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    if r.stdout.startswith("SKIP"):
        pytest.skip(f"cannot compile ahead for NVIDIA GPUs here: {r.stdout}")
    shared = [int(line.split()[-1]) for line in r.stdout.splitlines() if line.startswith("SHARED")]
    assert len(shared) == len(cases) and all(s <= 163 * 1024 for s in shared), r.stdout  # fits an A100's SM


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


@pytest.mark.skipif(not built_with_cuda, reason="pyquant._C was built without CUDA")
def test_cuda_prepare_checks_the_weight_once_and_x_per_call():
    """The cuda backend's prepared runner (what QuantLinear calls): a bad weight fails at prepare,
    before any x; the runner then checks each x (on the CPU, where it must refuse host tensors)."""
    from pyquant.ops.backends import qmatmul_cuda as backend

    x, qw, _ = _case("int4-g64", 2, 8, 128, torch.float32)
    with pytest.raises(ValueError, match="group size 48"):
        backend.prepare(qw.qweight, qw.scales, qw.zeros, 4, 48, 128)
    with pytest.raises(ValueError, match="zeros"):
        backend.prepare(qw.qweight, qw.scales, qw.zeros[:, :1], 4, 64, 128)
    run = backend.prepare(qw.qweight, qw.scales, qw.zeros, 4, 64, 128)
    with pytest.raises(ValueError, match="2-D"):
        run(x[0], None)
    with pytest.raises(ValueError, match="in_features"):
        run(x[:, :64], None)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        run(x, None)
    from pyquant.ops._registry import _REGISTRY

    assert _REGISTRY["qmatmul"]["cuda"].prepare is backend.prepare  # the op caches this runner per weight


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


# ---- CUDA kernel under a host warp simulator (no GPU needed) ------------------------------------
SIM_SOURCE = r"""
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>
#include <vector_types.h>
#include <vector_functions.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __forceinline__
#define __forceinline__ inline
#undef __launch_bounds__
#define __launch_bounds__(n)
struct SimDim { unsigned x = 0, y = 0, z = 0; };
static thread_local SimDim threadIdx, blockIdx;
template <class T> static inline T __ldg(const T* p) { return *p; }
static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
struct SimWarp { std::barrier<> bar{32}; float v[32]; };
static thread_local SimWarp* sim_warp;
static inline float __shfl_xor_sync(unsigned, float v, int off) {  // every lane must arrive, as on a GPU
  const unsigned lane = threadIdx.x & 31u;
  sim_warp->v[lane] = v;
  sim_warp->bar.arrive_and_wait();
  const float r = sim_warp->v[lane ^ unsigned(off)];
  sim_warp->bar.arrive_and_wait();
  return r;
}
#include "qmatmul_kernel.cuh"
extern "C" int sim_qmatmul(const void* x, int x_dtype, int64_t M, int64_t K, int64_t ldx, const void* qw, int64_t N,
                           int64_t ldq, int bits, int group_size, const void* scales, int scale_dtype, int64_t lds,
                           const uint8_t* zeros, int64_t ldz, const void* bias, void* y, int64_t ldy,
                           char* err, int errlen) {
  using namespace pyquant;
  using namespace pyquant::cuda::qgemv;
  Params p;
  std::string e;
  const Status st = make_params(DType(x_dtype), M, K, ldx, x, qw, N, ldq, bits, group_size, scales,
                                DType(scale_dtype), lds, zeros, ldz, bias, y, ldy, p, e);
  if (st != kOk) { std::strncpy(err, e.c_str(), errlen - 1); return st; }
  if (M == 0 || N == 0) return 0;
  for_each_launch(p, DType(x_dtype), bits, x, y, M, [&](auto kernel, int64_t blocks, const Params& q) {
    for (int64_t b = 0; b < blocks; ++b)
      for (int w = 0; w < kWarpsPerBlock; ++w) {
        SimWarp warp;
        std::vector<std::thread> lanes;
        for (int l = 0; l < 32; ++l)
          lanes.emplace_back([&, b, w, l] {
            blockIdx.x = unsigned(b); threadIdx.x = unsigned(w * 32 + l); sim_warp = &warp;
            kernel(q);
          });
        for (auto& t : lanes) t.join();
      }
  });
  return 0;
}
"""
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cuda_include():
    """A directory holding cuda_fp16.h (the CUDA toolkit's headers), or None."""
    cands = [os.path.join(os.environ.get(v, ""), "include") for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include"))
    cands.append("/usr/local/cuda/include")
    return next((c for c in cands if os.path.isfile(os.path.join(c, "cuda_fp16.h"))), None)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """The GEMV kernel compiled for the host with the warp simulator, loaded with ctypes."""
    cxx, inc = shutil.which("g++") or shutil.which("c++"), _cuda_include()
    if cxx is None or inc is None:
        pytest.skip("needs a C++20 compiler and the CUDA headers (cuda_fp16.h) to simulate the kernel")
    d = tmp_path_factory.mktemp("qgemv_sim")
    (d / "sim.cpp").write_text(SIM_SOURCE)
    cmd = [cxx, "-std=c++20", "-O0", "-shared", "-fPIC", "-Wno-unknown-pragmas", f"-I{REPO}/csrc/include",
           f"-I{REPO}/csrc/cuda", f"-I{inc}", str(d / "sim.cpp"), "-o", str(d / "sim.so"), "-lpthread"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return ctypes.CDLL(str(d / "sim.so"))


_DT = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _sim_call(lib, x, qw, b, bits=None, group=None, k=None):
    m = x.shape[0]
    k = x.shape[1] if k is None else k
    bits = qw.spec.bits if bits is None else bits
    group = (qw.spec.group_size or 0) if group is None else group
    n = qw.out_features
    y = torch.full((m, n), float("nan"), dtype=x.dtype)
    err = ctypes.create_string_buffer(256)
    P, I, C = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    z = qw.zeros
    st = lib.sim_qmatmul(P(x.data_ptr()), C(_DT[x.dtype]), I(m), I(k), I(x.stride(0)), P(qw.qweight.data_ptr()), I(n),
                         I(qw.qweight.stride(0)), C(bits), C(group), P(qw.scales.data_ptr()),
                         C(_DT[qw.scales.dtype]), I(qw.scales.stride(0)), P(z.data_ptr() if z is not None else None),
                         I(z.stride(0) if z is not None else 0), P(b.data_ptr() if b is not None else None),
                         P(y.data_ptr()), I(n), err, C(256))
    if st != 0:
        raise ValueError(err.value.decode())
    return y


@pytest.mark.parametrize("spec", ["int8", "int8-fp16", "int4-g32", "int4-g64-sym", "int4-g128", "int4-g256-sym-fp16"])
def test_cuda_kernel_simulated(sim, spec):
    """The CUDA GEMV kernel's own code, run by the host simulator, vs float64.

    Shapes cover M = 1..8 and the sliced M > 8 path, N not a multiple of the 4 warps per block,
    K with 16/32-code chunk tails and ragged groups, 16-byte-aligned rows (vector loads) and
    unaligned ones (K * itemsize not a multiple of 16, and an x view offset by one element).
    """
    cases = [(1, 5, 576, torch.float32), (3, 7, 1000, torch.bfloat16), (8, 3, 4097, torch.float16),
             (13, 5, 200, torch.float32), (2, 6, 33, torch.bfloat16)]
    for i, (m, n, k, dtype) in enumerate(cases):
        qw = quantize_weight(randn(n, k, seed=k), spec)
        x = randn(m, k + 1, dtype=dtype, seed=m)[:, 1:] if i == 3 else randn(m, k, dtype=dtype, seed=m)
        b = randn(n, dtype=dtype, seed=n) if i % 2 == 0 else None
        _assert_close(_sim_call(sim, x, qw, b), x, qw, b, what=f"simulated cuda {spec} M={m} N={n} K={k} {dtype}")


def test_cuda_kernel_simulated_rejects_bad_arguments(sim):
    """The C++ argument checks (shared with the real launch) name the problem."""
    qw = quantize_weight(randn(4, 64, seed=1), "int4-g32")
    x = randn(1, 64)
    with pytest.raises(ValueError, match="group size 48"):
        _sim_call(sim, x, qw, None, group=48)
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        _sim_call(sim, x, qw, None, bits=3)
    with pytest.raises(ValueError, match="ldq"):
        _sim_call(sim, randn(1, 100), qw, None, k=100)
