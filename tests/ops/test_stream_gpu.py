"""GPU stream backends: what the shared harness (tests/ops/test_stream.py) does not cover.

- Triton (runs under TRITON_INTERPRET=1 on the CPU, tiny shapes): the split-vocabulary combine
  path, packed-key order (ties, -0.0 vs +0.0, -inf), quantized heads with fp16 scales, its own
  argument checks.
- CUDA (skipped without a GPU): the tile reducer on hand-made tiles against torch.sort, the
  reducer's argument checks, non-default streams, and both backends on large shapes.
"""
import math
import os

import pytest
import torch

import pyquant as pq
from pyquant.ops import _native, reference

HAS_CUDA = torch.cuda.is_available() and _native.cuda_available()[0]
TRITON_OK = _native.triton_available()[0]
needs_triton = pytest.mark.skipif(not TRITON_OK, reason=f"triton unavailable: {_native.triton_available()[1]}")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason=f"cuda backend unavailable: {_native.cuda_available()[1]}")
TRITON_DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _sorted_ref(logits: torch.Tensor, n: int):
    """float64 top-N (values, ids) of a [T, V] logits matrix: descending, ties -> lower id first."""
    vals, ids = torch.sort(logits.double().cpu(), dim=-1, descending=True, stable=True)
    return vals[:, :n], ids[:, :n]


def _stream_topn():
    from pyquant.kernels.stream_topn import stream_topn

    return stream_topn


# ---- Triton ------------------------------------------------------------------------------------

@needs_triton
def test_triton_split_vocab_combine():
    """Vocabulary split across programs, then combined: same answer as one split and as float64,
    ties broken by the lower id across split boundaries."""
    t, h, v, n = 9, 16, 203, 12
    # small integers: float32 logits are exact, so many tie, also across splits
    hidden = torch.randint(-2, 3, (t, h)).float().to(TRITON_DEV)
    weight = torch.randint(-2, 3, (v, h)).float().to(TRITON_DEV)
    targets = torch.randint(0, v, (t,), device=TRITON_DEV)
    ref_ids = torch.stack([torch.randperm(v)[:4] for _ in range(t)]).to(TRITON_DEV)
    f = _stream_topn()
    one = f(hidden, weight, n, targets, ref_ids, vocab_tile=32, splits=1)
    logits = hidden.double() @ weight.double().T
    vals, ids = _sorted_ref(logits, n)
    for splits in (2, 5):  # 2: slices of 128 and 75 ids; 5 asked -> 4 slices of 64 ids, the last one 11
        many = f(hidden, weight, n, targets, ref_ids, vocab_tile=32, splits=splits)
        assert torch.equal(one["top_ids"], many["top_ids"]) and torch.equal(one["top_logits"], many["top_logits"])
        assert torch.equal(one["target_logits"], many["target_logits"])
        assert torch.equal(one["ref_logits"], many["ref_logits"])
        torch.testing.assert_close(many["logsumexp"].double().cpu(), torch.logsumexp(logits, -1).cpu(),
                                   atol=1e-4, rtol=0)
        assert torch.equal(many["top_ids"].cpu(), ids)
        torch.testing.assert_close(many["top_logits"].double().cpu(), vals, atol=0, rtol=0)


@needs_triton
def test_triton_split_all_minus_inf():
    """A split whose whole slice is -inf (and rows that are -inf everywhere) combine without NaN."""
    t, h, v, n, splits = 4, 16, 96, 5, 3
    hidden = torch.randn(t, h, device=TRITON_DEV)
    hidden[:, 0] = 1.0
    weight = torch.randn(v, h, device=TRITON_DEV)
    weight[:32, 0] = -math.inf       # the first split sees only -inf
    out = _stream_topn()(hidden, weight, n, vocab_tile=16, splits=splits)
    logits = reference.stream_logits(hidden, weight)
    assert torch.isfinite(out["logsumexp"]).all()
    torch.testing.assert_close(out["logsumexp"].double().cpu(), torch.logsumexp(logits, -1).cpu(), atol=1e-5, rtol=0)
    assert torch.equal(out["top_ids"].cpu(), _sorted_ref(logits, n)[1])
    weight[:, 0] = -math.inf         # now every logit is -inf: lse = -inf, ids 0..n-1
    out = _stream_topn()(hidden, weight, n, vocab_tile=16, splits=splits)
    assert torch.isneginf(out["logsumexp"]).all() and torch.isneginf(out["top_logits"]).all()
    assert torch.equal(out["top_ids"].cpu(), torch.arange(n).expand(t, n))


@needs_triton
def test_triton_signed_zero_ties():
    """Logits of +0.0 and -0.0 are equal: the lower id must come first whatever the sign."""
    t, h, v, n = 2, 16, 40, 6
    hidden = torch.zeros(t, h, device=TRITON_DEV)
    hidden[:, 0] = 1.0
    weight = torch.zeros(v, h, device=TRITON_DEV)
    weight[:, 0] = -1.0
    weight[3, 0] = -0.0   # logit -0.0
    weight[7, 0] = 0.0    # logit +0.0 (a higher id)
    weight[20, 0] = -0.0
    out = _stream_topn()(hidden, weight, n, vocab_tile=16)
    assert out["top_ids"][:, :3].tolist() == [[3, 7, 20]] * t
    assert (out["top_logits"][:, :3] == 0).all() and (out["top_logits"][:, 3:] == -1).all()
    assert out["top_ids"][:, 3:].tolist() == [[0, 1, 2]] * t


@needs_triton
def test_triton_key_packing_order():
    """decode_keys inverts the kernel's packing, and key order is (logit desc, id asc)."""
    from pyquant.kernels.stream_topn import KEY_EMPTY, decode_keys

    vals = torch.tensor([3.5, -2.0, 3.5, -math.inf, 1e-40, 0.0, -1e30, 7e37])
    ids = torch.tensor([9, 4, 2, 11, 6, 0, 1, 2**31 - 2])
    s = vals.view(torch.int32)
    s = s ^ ((s >> 31) & 0x7FFFFFFF)
    keys = (s.to(torch.int64) << 32) | (2**31 - 1 - ids)
    got_v, got_i = decode_keys(keys)
    assert torch.equal(got_v.view(torch.int32), vals.view(torch.int32)) and torch.equal(got_i, ids)
    order = torch.sort(keys, descending=True).indices
    want = sorted(range(len(vals)), key=lambda i: (-vals[i].item(), ids[i].item()))
    assert order.tolist() == want
    ev, ei = decode_keys(torch.tensor([KEY_EMPTY]))
    assert torch.isneginf(ev).all() and ei.item() == -1 and KEY_EMPTY < keys.min()


@needs_triton
@pytest.mark.parametrize("spec,dtype", [("int8-fp16", torch.float32), ("int4-g32-fp16", torch.float32),
                                        ("int4-g64", torch.float16), ("int8", torch.bfloat16)])
def test_triton_quantized_head_variants(spec, dtype):
    """In-kernel dequantization: fp16 scales, half activations, ragged last group (H=72)."""
    t, h, v, n = 5, 72, 150, 8
    hidden = (torch.randn(t, h) / 3).to(device=TRITON_DEV, dtype=dtype)
    qw = pq.quantize_weight(torch.randn(v, h).to(TRITON_DEV), spec)
    targets = torch.randint(0, v, (t,), device=TRITON_DEV)
    out = pq.ops.stream_logprobs(hidden, qw, top_n=n, targets=targets, vocab_tile=64, backend="triton")
    logits = hidden.double().cpu() @ qw.dequantize(torch.float64).cpu().T
    lse = torch.logsumexp(logits, -1)
    # half activations: the dot runs in that dtype, so a dequantized int4 weight is rounded to it
    tol = 1e-4 if dtype == torch.float32 or spec.startswith("int8") else 3e-2
    torch.testing.assert_close(out.logsumexp.double().cpu(), lse, atol=tol, rtol=0)
    vals, _ = _sorted_ref(logits, n)
    torch.testing.assert_close(out.top_logprobs.double().cpu(), vals - lse[:, None], atol=2 * tol, rtol=0)
    torch.testing.assert_close(out.target_logprobs.double().cpu(), logits.gather(1, targets.cpu()[:, None])[:, 0] - lse,
                               atol=2 * tol, rtol=0)


_COMPILE_AHEAD = """
import sys, torch
from pyquant.kernels.stream_topn import WFMT_DENSE, WFMT_INT4, WFMT_INT8, compile_ahead, kernel_meta
arch, case = int(sys.argv[1]), sys.argv[2]
dtype, wfmt, n, wptr = {"bf16-dense-n64": (torch.bfloat16, WFMT_DENSE, 64, "bf16"),
                        "fp16-int4-zeros": (torch.float16, WFMT_INT4, 16, "u8"),
                        "fp32-int8": (torch.float32, WFMT_INT8, 16, "i8")}[case]
# the default case also builds the head's bias and soft cap (an LMHead's steps after the product)
meta = kernel_meta(2048, 576, n, 2048, dtype, wfmt, wfmt == WFMT_INT4, True, n, interp=False,
                   has_bias=case == "bf16-dense-n64", has_softcap=case == "bf16-dense-n64")
assert meta["BLOCK_V"] == 128 and meta["BLOCK_T"] == 64, meta
ptr = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
try:
    k = compile_ahead(arch, meta, hidden_ptr=ptr, weight_ptr=wptr)
except (ImportError, FileNotFoundError) as e:
    print("SKIP", e)
    raise SystemExit(0)
assert len(k.asm["cubin"]) > 0
print("SHARED", k.metadata.shared)
"""


@needs_triton
@pytest.mark.parametrize("arch,case", [(90, "bf16-dense-n64"),  # the others take ~25 s each here: slow
                                       pytest.param(80, "fp16-int4-zeros", marks=pytest.mark.slow),
                                       pytest.param(80, "fp32-int8", marks=pytest.mark.slow)])
def test_triton_kernel_compiles_for_gpus(arch, case):
    """What the interpreter runs must also build for the hardware: compile ahead for sm_80 / sm_90
    with the launch parameters a GPU call would use (no GPU needed: Triton's bundled ptxas; in a
    subprocess, because the interpreter replaces the kernel object in this one)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _COMPILE_AHEAD, str(arch), case], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    if r.stdout.startswith("SKIP"):
        pytest.skip(f"cannot compile ahead for sm_{arch} here: {r.stdout}")
    shared = int(r.stdout.split("SHARED")[1])
    assert 0 < shared <= (163 if arch == 80 else 227) * 1024  # fits the SM's shared memory


@needs_triton
def test_triton_backend_rejects_bad_direct_calls():
    from pyquant.ops.backends.stream_triton import stream_logprobs_triton as f

    hidden, weight = torch.randn(3, 8, device=TRITON_DEV), torch.randn(10, 8, device=TRITON_DEV)
    with pytest.raises(ValueError, match="top_n"):
        f(hidden, weight, 11)
    with pytest.raises(ValueError, match="contiguous"):
        f(hidden, weight.T.contiguous().T, 2)
    with pytest.raises(ValueError, match="H=8"):
        f(hidden[:, :4].contiguous(), weight, 2)
    with pytest.raises(ValueError, match="targets"):
        f(hidden, weight, 2, targets=torch.zeros(3, dtype=torch.int32, device=TRITON_DEV))
    with pytest.raises(ValueError, match="ref_ids"):
        f(hidden, weight, 2, ref_ids=torch.zeros(2, 2, dtype=torch.int64, device=TRITON_DEV))


# ---- CUDA --------------------------------------------------------------------------------------

def _run_reducer(logits, n, tile, targets=None, ref_ids=None, stream=None):
    """Fold logits [rows, V] tile by tile with the CUDA reducer; return the state (on the GPU)."""
    C = _native.native()
    rows, v = logits.shape
    dev = logits.device
    st = dict(run_max=torch.full((rows,), -math.inf, device=dev), run_sum=torch.zeros(rows, device=dev),
              top_vals=torch.full((rows, n), -math.inf, device=dev),
              top_ids=torch.full((rows, n), -1, dtype=torch.int64, device=dev),
              target_logits=None if targets is None else torch.full((rows,), math.nan, device=dev),
              ref_logits=None if ref_ids is None else torch.full(tuple(ref_ids.shape), math.nan, device=dev))
    s = stream or torch.cuda.current_stream()
    for v0 in range(0, v, tile):
        C.stream_reduce_tile_cuda(logits[:, v0:v0 + tile], v0, st["run_max"], st["run_sum"], st["top_vals"],
                                  st["top_ids"], targets, st["target_logits"], ref_ids, st["ref_logits"],
                                  s.cuda_stream)
    return st


def test_cuda_binding_rejects_host_arrays():
    """Builds with CUDA (nvcc found) expose the reducer even without a GPU; host arrays are refused
    with a ValueError naming the argument, before anything reaches the device."""
    C = _native.native()
    if C is None or not hasattr(C, "stream_reduce_tile_cuda"):
        pytest.skip("pyquant._C was built without CUDA")
    rows, n = 3, 4
    logits = torch.randn(rows, 10)
    state = (torch.full((rows,), -math.inf), torch.zeros(rows), torch.full((rows, n), -math.inf),
             torch.full((rows, n), -1, dtype=torch.int64))
    with pytest.raises(ValueError, match="logits: must be a CUDA array"):
        C.stream_reduce_tile_cuda(logits, 0, *state, None, None, None, None, 0)
    with pytest.raises(ValueError, match="logits"):
        C.stream_reduce_tile_cuda([1.0, 2.0], 0, *state, None, None, None, None, 0)


@needs_cuda
@pytest.mark.parametrize("n", [1, 16, 64])
def test_cuda_tile_reducer_edge_tiles(n):
    rows, v, tile = 6, 333, 50
    logits = torch.randn(rows, v, dtype=torch.float64) * 3
    logits[0] = -math.inf                                   # all impossible
    logits[1, :170] = -math.inf                             # -inf for the first tiles
    logits[2, ::3] = 7.0                                    # many exact ties at the top
    logits[3] = 1e4 + torch.randint(-3, 4, (v,)).double()   # huge, tied
    logits[4, 100:] = -0.0
    logits[4, 200:] = 0.0                                   # signed-zero ties
    logits = logits.float().cuda()
    targets = torch.tensor([3, 5, 332, 0, 150, 49]).cuda()
    ref_ids = torch.stack([torch.randperm(v)[:7] for _ in range(rows)]).cuda()
    st = _run_reducer(logits, n, tile, targets, ref_ids)
    torch.cuda.synchronize()
    lse = st["run_max"].double().cpu() + st["run_sum"].double().cpu().log()
    want = torch.logsumexp(logits.double().cpu(), -1)
    assert torch.isneginf(lse[0]) and not torch.isnan(st["run_sum"]).any()
    torch.testing.assert_close(lse[1:], want[1:], atol=1e-5 * 1e4, rtol=1e-5)
    vals, ids = torch.sort(logits.cpu(), dim=-1, descending=True, stable=True)
    assert torch.equal(st["top_ids"].cpu(), ids[:, :n])
    assert torch.equal(st["top_vals"].cpu(), vals[:, :n])
    assert torch.equal(st["target_logits"].cpu(), logits.cpu()[torch.arange(rows), targets.cpu()])
    assert torch.equal(st["ref_logits"].cpu(), logits.cpu().gather(1, ref_ids.cpu()))


@needs_cuda
def test_cuda_tile_reducer_on_side_stream_matches_cpu_reducer():
    C = _native.native()
    rows, v, n, tile = 37, 1000, 32, 128
    logits = torch.randn(rows, v) * 4
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        st = _run_reducer(logits.cuda(non_blocking=False), n, tile, stream=side)
    side.synchronize()
    if hasattr(C, "stream_reduce_tile_cpu"):
        mx, sm = torch.full((rows,), -math.inf), torch.zeros(rows)
        tv, ti = torch.full((rows, n), -math.inf), torch.full((rows, n), -1, dtype=torch.int64)
        for v0 in range(0, v, tile):
            C.stream_reduce_tile_cpu(logits[:, v0:v0 + tile], v0, mx, sm, tv, ti, None, None, None, None, 1)
        assert torch.equal(st["top_ids"].cpu(), ti) and torch.equal(st["top_vals"].cpu(), tv)
    vals, ids = torch.sort(logits, dim=-1, descending=True, stable=True)
    assert torch.equal(st["top_ids"].cpu(), ids[:, :n])


@needs_cuda
def test_cuda_tile_reducer_rejects_bad_arguments():
    C = _native.native()
    logits = torch.randn(4, 10, device="cuda")
    st = dict(run_max=torch.full((4,), -math.inf, device="cuda"), run_sum=torch.zeros(4, device="cuda"))
    tv, ti = torch.full((4, 3), -math.inf, device="cuda"), torch.full((4, 3), -1, dtype=torch.int64, device="cuda")
    s = torch.cuda.current_stream().cuda_stream
    with pytest.raises(ValueError, match="CUDA"):
        C.stream_reduce_tile_cuda(logits.cpu(), 0, st["run_max"], st["run_sum"], tv, ti, None, None, None, None, s)
    with pytest.raises(ValueError, match="top_ids"):
        C.stream_reduce_tile_cuda(logits, 0, st["run_max"], st["run_sum"], tv, ti.int(), None, None, None, None, s)
    with pytest.raises(ValueError, match="top_n"):
        C.stream_reduce_tile_cuda(logits, 0, st["run_max"], st["run_sum"], torch.zeros(4, 65, device="cuda"),
                                  torch.zeros(4, 65, dtype=torch.int64, device="cuda"), None, None, None, None, s)
    with pytest.raises(ValueError, match="run_sum"):
        C.stream_reduce_tile_cuda(logits, 0, st["run_max"], st["run_sum"][:3], tv, ti, None, None, None, None, s)
    with pytest.raises(ValueError, match="columns"):
        C.stream_reduce_tile_cuda(logits.T, 0, st["run_max"], st["run_sum"], tv, ti, None, None, None, None, s)


@needs_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_backends_large(backend, dtype):
    """Shapes the interpreter cannot afford: T=513, V=50,000 (not a multiple of any tile), N=64."""
    if backend == "triton" and not TRITON_OK:
        pytest.skip("triton unavailable")
    t, h, v, n = 513, 256, 50000, 64
    hidden = (torch.randn(t, h, device="cuda") / 8).to(dtype)
    weight = torch.randn(v, h, device="cuda").to(dtype)
    targets = torch.randint(0, v, (t,), device="cuda")
    ref_ids = torch.stack([torch.randperm(v)[:16] for _ in range(t)]).cuda()
    out = pq.ops.stream_logprobs(hidden, weight, top_n=n, targets=targets, ref_ids=ref_ids, vocab_tile=3000,
                                 backend=backend)
    logits = hidden.double() @ weight.double().T
    lse = torch.logsumexp(logits, -1)
    tol = 1e-4 * math.sqrt(h) * (hidden.double().norm(dim=1).max() * weight.double().norm(dim=1).max()).item() / h
    torch.testing.assert_close(out.logsumexp.double(), lse, atol=tol + 1e-5, rtol=0)
    got = logits.gather(1, out.top_ids) - lse[:, None]   # the ids' exact log-probs
    torch.testing.assert_close(out.top_logprobs.double(), got, atol=2 * tol + 1e-5, rtol=0)
    vals, _ = torch.sort(logits, dim=-1, descending=True)
    torch.testing.assert_close(out.top_logprobs.double(), vals[:, :n] - lse[:, None], atol=2 * tol + 1e-5, rtol=0)
    torch.testing.assert_close(out.target_logprobs.double(), logits.gather(1, targets[:, None])[:, 0] - lse,
                               atol=2 * tol + 1e-5, rtol=0)
    torch.testing.assert_close(out.ref_logprobs_cand.double(), logits.gather(1, ref_ids) - lse[:, None],
                               atol=2 * tol + 1e-5, rtol=0)


@needs_cuda
def test_cuda_backend_rejects_top_n_over_64():
    hidden, weight = torch.randn(2, 8, device="cuda"), torch.randn(100, 8, device="cuda")
    with pytest.raises(ValueError, match="top_n"):
        pq.ops.stream_logprobs(hidden, weight, top_n=65, backend="cuda")


def test_gpu_backends_registered_with_reasons():
    """Both GPU backends register, and say why when they cannot run here (nothing silent)."""
    import pyquant.ops.stream  # noqa: F401  (registers the reference next to them)

    info = pq.ops.backend_info()["stream_logprobs"]["backends"]
    assert "cuda" in info and "triton" in info
    for name in ("cuda", "triton"):
        assert info[name]["available"] or info[name]["reason"]
    assert info["cuda"]["available"] == HAS_CUDA
    kl = pq.ops.backend_info()["stream_kl_exact"]["backends"]
    assert "cuda" in kl and kl["cuda"]["available"] == torch.cuda.is_available()
    if os.environ.get("TRITON_INTERPRET") == "1" and TRITON_OK:
        assert "cpu" in info["triton"]["devices"]
