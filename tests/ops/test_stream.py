"""stream_logprobs / stream_kl_exact: every available backend against the float64 materialized
reference (pyquant/ops/reference.py), on fresh random inputs of awkward shapes, plus the
statistics (top-N KL estimator vs exact KL), edge cases and input validation.

One harness: a backend is tested here the moment it registers. Backends that are slow on this
machine (Triton under TRITON_INTERPRET=1) run only the cases within their MAX_SIZE entry.
"""
import math

import pytest
import torch

import pyquant as pq
from pyquant.ops import reference
from pyquant.ops import stream as stream_mod

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Per-backend size limits (T, V, H) for the accuracy cases; absent = no limit.
MAX_SIZE = {"triton": (64, 2048, 64)}
EPS32 = torch.finfo(torch.float32).eps


def _backends():
    out = []
    for dev in DEVICES:
        for name in pq.ops.available_backends("stream_logprobs", dev):
            if name != "reference":  # the reference is the oracle
                out.append(pytest.param(name, dev, id=f"{name}-{dev}"))
    return out


BACKENDS = _backends()


def _fits(backend, t, v, h):
    lim = MAX_SIZE.get(backend)
    if lim is not None and (t > lim[0] or v > lim[1] or h > lim[2]):
        pytest.skip(f"{backend}: case (T={t}, V={v}, H={h}) is beyond its test size limit {lim}")


def _tol(hidden, weight) -> float:
    """Absolute error bound for float32 logits and log-probs: a few ulps of the largest dot product."""
    w = weight.dequantize() if isinstance(weight, pq.QuantizedWeight) else weight
    hn = hidden.double().norm(dim=1).max().item()
    wn = w.double().norm(dim=1).max().item()
    return 8 * EPS32 * math.sqrt(hidden.shape[1]) * hn * wn + 1e-5


def _ref_topn(hidden, weight, n):
    """A reference model's stored top-N: (ids [T, N], float32 log-probs [T, N]) from float64."""
    lp = torch.log_softmax(reference.stream_logits(hidden, weight), dim=-1)
    vals, ids = torch.sort(lp, dim=-1, descending=True, stable=True)
    return ids[:, :n].contiguous(), vals[:, :n].to(torch.float32)


def _check_against_reference(out, hidden, weight, top_n, targets=None, ref_ids=None, tol=None):
    tol = _tol(hidden, weight) if tol is None else tol
    want = reference.stream_logprobs(hidden, weight, top_n, targets, ref_ids)
    logits = reference.stream_logits(hidden, weight)
    lse = want["logsumexp"]
    assert out.logsumexp.dtype == torch.float32 and out.top_ids.dtype == torch.int64
    torch.testing.assert_close(out.logsumexp.double(), lse, atol=tol, rtol=0)
    # sorted top-N values are stable under rounding; ids are checked through their exact logits
    torch.testing.assert_close(out.top_logprobs.double(), want["top_logits"] - lse[:, None], atol=2 * tol, rtol=0)
    got_ids = out.top_ids.cpu()
    assert got_ids.min() >= 0 and got_ids.max() < logits.shape[1]
    assert (got_ids.sort(dim=1).values[:, 1:] != got_ids.sort(dim=1).values[:, :-1]).all(), "duplicated top ids"
    torch.testing.assert_close(logits.gather(1, got_ids) - lse[:, None], out.top_logprobs.double(), atol=2 * tol, rtol=0)
    assert (out.top_logprobs[:, 1:] <= out.top_logprobs[:, :-1]).all(), "top_logprobs not sorted descending"
    if targets is not None:
        torch.testing.assert_close(out.target_logprobs.double(), want["target_logits"] - lse, atol=2 * tol, rtol=0)
    if ref_ids is not None:
        torch.testing.assert_close(out.ref_logprobs_cand.double(), want["ref_logits"] - lse[:, None],
                                   atol=2 * tol, rtol=0)


def _model(t, h, v, device, dtype=torch.float32, scale=1.0):
    hidden = (torch.randn(t, h, dtype=torch.float64) * scale / math.sqrt(h) * 3).to(device=device, dtype=dtype)
    weight = torch.randn(v, h, dtype=torch.float64).to(device=device, dtype=dtype)
    return hidden, weight


# ---- accuracy against the reference -----------------------------------------------------------

CASES = [  # (T, H, V, N, vocab_tile): V not a multiple of the tile, N from 1 to 64
    (1, 16, 7, 1, 4),
    (3, 24, 7, 7, 3),
    (33, 40, 1001, 16, 256),
    (64, 64, 4093, 64, 1000),
    (513, 64, 5003, 16, 1024),
    (17, 96, 50000, 32, 4096),
]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("t,h,v,n,tile", CASES)
def test_matches_reference(backend, device, t, h, v, n, tile):
    _fits(backend, t, v, h)
    hidden, weight = _model(t, h, v, device)
    targets = torch.randint(0, v, (t,), device=device)
    ref_ids, ref_lp = _ref_topn(hidden + 0.1 * torch.randn_like(hidden), weight, min(n, v))
    out = pq.ops.stream_logprobs(hidden, weight, top_n=n, targets=targets, ref_ids=ref_ids, ref_logprobs=ref_lp,
                                 vocab_tile=tile, backend=backend)
    assert out.backend == backend
    _check_against_reference(out, hidden, weight, n, targets, ref_ids)
    assert out.kl.shape == (t,) and torch.isfinite(out.kl).all() and (out.kl >= -1e-6).all()
    assert ((out.reject >= 0) & (out.reject <= 1)).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_ties_lower_id_first(backend, device):
    # small-integer inputs: float32 logits are exact, so many are exactly equal
    t, h, v, n = 9, 8, 203, 40
    hidden = torch.randint(-1, 2, (t, h)).float().to(device)
    weight = torch.randint(-1, 2, (v, h)).float().to(device)
    out = pq.ops.stream_logprobs(hidden, weight, top_n=n, vocab_tile=37, backend=backend)
    vals, ids = torch.sort(reference.stream_logits(hidden, weight), dim=-1, descending=True, stable=True)
    assert torch.equal(out.top_ids.cpu(), ids[:, :n].cpu())


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_huge_logits(backend, device):
    # integer inputs with logits around 1e4, exact in float32; log-probs good to a few ulps of 1e4
    t, h, v, n = 7, 16, 301, 8
    hidden = torch.randint(20, 31, (t, h)).float().to(device)
    weight = torch.randint(20, 31, (v, h)).float().to(device)
    assert reference.stream_logits(hidden, weight).min() > 6000
    out = pq.ops.stream_logprobs(hidden, weight, top_n=n, targets=torch.arange(t, device=device), vocab_tile=64,
                                 backend=backend)
    _check_against_reference(out, hidden, weight, n, torch.arange(t, device=device), tol=4 * 1e4 * EPS32)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_minus_inf_logits(backend, device):
    # rows of W with a -inf in column 0 (hidden[:, 0] = 1) give logits of exactly -inf, including
    # every token of the first tiles (the online log-sum-exp must not produce NaN)
    t, h, v, n, tile = 6, 8, 50, 12, 8
    hidden, weight = _model(t, h, v, device)
    hidden[:, 0] = 1.0
    masked = torch.zeros(v, dtype=torch.bool)
    masked[:20] = True
    masked[torch.randperm(v)[:15]] = True
    weight[masked.to(device), 0] = -math.inf
    logits = reference.stream_logits(hidden, weight)
    assert torch.isneginf(logits[:, masked]).all() and torch.isfinite(logits[:, ~masked]).all()
    n_live = int((~masked).sum())
    top_n = n_live + 2  # more than the live tokens: the tail of the top-N is -inf, ids by increasing id
    out = pq.ops.stream_logprobs(hidden, weight, top_n=top_n, targets=torch.zeros(t, dtype=torch.int64, device=device),
                                 vocab_tile=tile, backend=backend)
    assert torch.isfinite(out.logsumexp).all()
    assert torch.isneginf(out.target_logprobs).all()
    _, ids = torch.sort(logits, dim=-1, descending=True, stable=True)
    assert torch.equal(out.top_ids[:, n_live:].cpu(), ids[:, n_live:top_n].cpu())
    assert torch.isneginf(out.top_logprobs[:, n_live:]).all()
    good = reference.stream_logprobs(hidden, weight, n_live)
    torch.testing.assert_close(out.top_logprobs[:, :n_live].double(), good["top_logits"] - good["logsumexp"][:, None],
                               atol=2 * _tol(hidden[:, 1:], weight[:, 1:]) + 1e-5, rtol=0)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_dominant_token(backend, device):
    # hidden aligned with one row of W: p(that token) ~ 1, the rest ~ 0; no NaN anywhere
    t, h, v, n = 5, 32, 999, 16
    hidden, weight = _model(t, h, v, device)
    winners = torch.randint(0, v, (t,))
    hidden = (40.0 * weight[winners.to(device)]).contiguous()
    ref_ids, ref_lp = _ref_topn(hidden, weight, n)
    out = pq.ops.stream_logprobs(hidden, weight, top_n=n, ref_ids=ref_ids, ref_logprobs=ref_lp, vocab_tile=128,
                                 backend=backend)
    assert torch.equal(out.top_ids[:, 0].cpu(), winners)
    assert out.top_logprobs[:, 0].abs().max() < 1e-3
    for x in (out.kl, out.kl_renorm, out.reject):
        assert torch.isfinite(x).all()
        assert x.abs().max() < 1e-4
    assert out.top1_agree.all()


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("h_dtype,w_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16),
                                             (torch.float16, torch.float16)])
def test_low_precision_inputs(backend, device, h_dtype, w_dtype):
    t, h, v, n = 19, 48, 777, 16
    hidden, weight = _model(t, h, v, device)
    hidden, weight = hidden.to(h_dtype), weight.to(w_dtype)  # the reference reads these values exactly
    out = pq.ops.stream_logprobs(hidden, weight, top_n=n, vocab_tile=100, backend=backend)
    _check_against_reference(out, hidden, weight, n)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("spec", ["int8", "int4-g32", "int4-g64-sym"])
def test_quantized_head(backend, device, spec):
    t, h, v, n = 11, 80, 513, 16  # H not a multiple of the group: ragged last group
    hidden, weight = _model(t, h, v, device)
    qw = pq.quantize_weight(weight, spec)
    targets = torch.randint(0, v, (t,), device=device)
    out = pq.ops.stream_logprobs(hidden, qw, top_n=n, targets=targets, vocab_tile=100, backend=backend)
    _check_against_reference(out, hidden, qw, n, targets)  # reference: the dequantized weight in float64


def _head_logits64(hidden, head):
    """The oracle of an LMHead's logits, written out here (not ops/head.py): float64
    cap * tanh((hidden @ W.T + b) / cap)."""
    w = head.weight.dequantize(torch.float64) if isinstance(head.weight, pq.QuantizedWeight) else head.weight.double()
    z = hidden.double() @ w.T
    if head.bias is not None:
        z = z + head.bias.double()[None, :]
    return z if head.softcap is None else head.softcap * torch.tanh(z / head.softcap)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("spec,bias,cap", [(None, True, None), (None, False, 2.5), (None, True, 4.0),
                                           ("int4-g32", True, 4.0), ("int8", True, None)])
def test_head_bias_and_soft_cap(backend, device, spec, bias, cap):
    """An LMHead's bias and soft cap (Phi / GPT-J heads, Gemma 2's final_logit_softcapping) against
    the float64 oracle: the cap is small enough to bend the larger logits."""
    from pyquant.ops.head import LMHead

    t, h, v, n = 37, 48, 1003, 16
    hidden, weight = _model(t, h, v, device, scale=2.0)
    w = pq.quantize_weight(weight, spec) if spec else weight
    b = torch.randn(v, dtype=torch.float64).mul(2).to(device=device, dtype=torch.float32) if bias else None
    head = LMHead(w, b, cap)
    targets = torch.randint(0, v, (t,), device=device)
    out = pq.ops.stream_logprobs(hidden, head, top_n=n, targets=targets, vocab_tile=200, backend=backend)
    logits = _head_logits64(hidden, head).cpu()
    lse = torch.logsumexp(logits, -1)
    tol = 2 * _tol(hidden, w) if cap is None else 1e-4  # tanh bounds every logit by the cap
    torch.testing.assert_close(out.logsumexp.double().cpu(), lse, atol=tol, rtol=0)
    torch.testing.assert_close(out.top_logprobs.double().cpu(), (logits.topk(n).values - lse[:, None]), atol=2 * tol, rtol=0)
    torch.testing.assert_close(logits.gather(1, out.top_ids.cpu()) - lse[:, None], out.top_logprobs.double().cpu(),
                               atol=2 * tol, rtol=0)
    torch.testing.assert_close(out.target_logprobs.double().cpu(), logits.gather(1, targets.cpu()[:, None])[:, 0] - lse,
                               atol=2 * tol, rtol=0)
    bare = torch.log_softmax(hidden.double().cpu() @ pq.ops.reference.lm_head_weight(w).cpu().T, -1)
    assert float((bare.topk(n).values - out.top_logprobs.double().cpu()).abs().max()) > 0.1  # the steps matter


# ---- the statistics: top-N KL vs exact KL ------------------------------------------------------

def _kl_backends():
    return [pytest.param(b, d, id=f"{b}-{d}") for d in DEVICES for b in pq.ops.available_backends("stream_kl_exact", d)]


@pytest.mark.parametrize("backend,device", _kl_backends())
def test_kl_exact_matches_float64(backend, device):
    t, h, v = 23, 32, 3001
    h_ref, w_ref = _model(t, h, v, device)
    h_cand = h_ref + 0.2 * torch.randn_like(h_ref)
    w_cand = pq.quantize_weight(w_ref, "int4-g32")
    got = pq.ops.stream_kl_exact(h_ref, w_ref, h_cand, w_cand, vocab_tile=500, backend=backend)
    lp = torch.log_softmax(h_ref.double() @ w_ref.double().T, -1)
    lq = torch.log_softmax(h_cand.double() @ w_cand.dequantize(torch.float64).T, -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    tv = 0.5 * (lp.exp() - lq.exp()).abs().sum(-1)
    assert got.kl.shape == (t,) and got.tv.shape == (t,)
    torch.testing.assert_close(got.kl, kl, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got.tv, tv, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend,device", _kl_backends())
def test_kl_exact_with_head_bias_and_soft_cap(backend, device):
    from pyquant.ops.head import LMHead

    t, h, v = 19, 32, 2001
    h_ref, w_ref = _model(t, h, v, device, scale=2.0)
    bias = torch.randn(v, device=device)
    ref = LMHead(w_ref, bias, 3.0)
    cand = LMHead(pq.quantize_weight(w_ref, "int4-g32"), bias, 3.0)
    h_cand = h_ref + 0.2 * torch.randn_like(h_ref)
    got = pq.ops.stream_kl_exact(h_ref, ref, h_cand, cand, vocab_tile=500, backend=backend)
    lp = torch.log_softmax(_head_logits64(h_ref, ref), -1)
    lq = torch.log_softmax(_head_logits64(h_cand, cand), -1)
    torch.testing.assert_close(got.kl, (lp.exp() * (lp - lq)).sum(-1), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got.tv, 0.5 * (lp.exp() - lq.exp()).abs().sum(-1), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("t,h,v,n", [(1, 16, 9, 4), (40, 32, 2001, 16), (200, 48, 9000, 64)])
def test_topn_kl_is_a_lower_bound(backend, device, t, h, v, n):
    _fits(backend, t, v, h)
    h_ref, w = _model(t, h, v, device)
    h_cand = h_ref + 0.3 * torch.randn_like(h_ref)
    ref_ids, ref_lp = _ref_topn(h_ref, w, n)
    out = pq.ops.stream_logprobs(h_cand, w, top_n=n, ref_ids=ref_ids, ref_logprobs=ref_lp, vocab_tile=512,
                                 backend=backend)
    exact = pq.ops.stream_kl_exact(h_ref, w, h_cand, w)
    assert (out.kl <= exact.kl + 1e-5).all()
    assert (out.reject <= exact.tv + 1e-5).all()
    assert (out.kl > 0).any()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_topn_kl_equals_exact_when_mass_inside(backend, device):
    # (a) V <= N: the top-N is the whole vocabulary
    t, h = 17, 24
    h_ref, w = _model(t, h, 7, device)
    h_cand = h_ref + 0.5 * torch.randn_like(h_ref)
    ref_ids, ref_lp = _ref_topn(h_ref, w, 7)
    out = pq.ops.stream_logprobs(h_cand, w, top_n=7, ref_ids=ref_ids, ref_logprobs=ref_lp, vocab_tile=3,
                                 backend=backend)
    torch.testing.assert_close(out.kl, pq.ops.stream_kl_exact(h_ref, w, h_cand, w).kl, atol=1e-5, rtol=1e-4)
    # (b) the reference's logits are -inf outside n tokens; the candidate's are all finite
    v, n = 600, 16
    h_ref, w_ref = _model(t, h, v, device)
    h_ref[:, 0] = 1.0
    keep = torch.randperm(v)[:n]
    outside = torch.ones(v, dtype=torch.bool)
    outside[keep] = False
    w_ref[outside.to(device), 0] = -math.inf
    h_cand, w_cand = h_ref[:, 1:].contiguous(), w_ref[:, 1:].contiguous() + 0.05 * torch.randn(v, h - 1, device=device)
    ref_ids, ref_lp = _ref_topn(h_ref, w_ref, n)
    assert torch.equal(ref_ids.sort(dim=1).values, keep.sort().values.expand(t, n).to(device))
    out = pq.ops.stream_logprobs(h_cand, w_cand, top_n=n, ref_ids=ref_ids, ref_logprobs=ref_lp, vocab_tile=128,
                                 backend=backend)
    exact = pq.ops.stream_kl_exact(h_ref, w_ref, h_cand, w_cand)
    assert (exact.kl > 1e-3).all()
    torch.testing.assert_close(out.kl, exact.kl, atol=1e-5, rtol=1e-4)


def test_statistics_by_hand():
    """topn_statistics against the DESIGN.md formulas written out in float64 on one row."""
    lp = torch.tensor([[math.log(0.5), math.log(0.2), math.log(0.1)]], dtype=torch.float64)
    lq = torch.tensor([[math.log(0.3), math.log(0.3), -math.inf]], dtype=torch.float64)
    s = stream_mod.topn_statistics(lp, lq)
    p, q = [0.5, 0.2, 0.1, 0.2], [0.3, 0.3, 0.0, 0.4]
    # a reference token the candidate finds impossible: the estimator is +inf
    assert math.isinf(s["kl"].item())
    assert s["reject"].item() == pytest.approx(0.5 * sum(abs(a - b) for a, b in zip(p, q)))
    lq = torch.tensor([[math.log(0.3), math.log(0.3), math.log(0.05)]], dtype=torch.float64)
    s = stream_mod.topn_statistics(lp, lq)
    q = [0.3, 0.3, 0.05, 0.35]
    assert s["kl"].item() == pytest.approx(sum(a * math.log(a / b) for a, b in zip(p, q)), rel=1e-12)
    pn, qn = [x / 0.8 for x in p[:3]], [x / 0.65 for x in q[:3]]
    assert s["kl_renorm"].item() == pytest.approx(sum(a * math.log(a / b) for a, b in zip(pn, qn)), rel=1e-12)
    assert s["reject"].item() == pytest.approx(0.5 * sum(abs(a - b) for a, b in zip(p, q)), rel=1e-12)


def test_top1_agree_and_ref_subset():
    t, h, v = 30, 16, 100
    hidden, weight = _model(t, h, v, "cpu")
    ids, lp = _ref_topn(hidden, weight, 5)
    ids[::2, 0], ids[::2, 1] = ids[::2, 1].clone(), ids[::2, 0].clone()  # every other row: argmax not first
    lp[::2, 0], lp[::2, 1] = lp[::2, 1].clone(), lp[::2, 0].clone()
    out = pq.ops.stream_logprobs(hidden, weight, top_n=3, ref_ids=ids, ref_logprobs=lp)
    assert out.ref_logprobs_cand.shape == (t, 5)
    assert torch.equal(out.top1_agree, torch.arange(t) % 2 == 1)


# ---- the C++ tile reducer on hand-made tiles ---------------------------------------------------

def test_cpu_tile_reducer_edge_tiles():
    C = pytest.importorskip("pyquant._C")
    if not hasattr(C, "stream_reduce_tile_cpu"):
        pytest.skip("pyquant._C has no stream_reduce_tile_cpu")
    rows, v, n, tile = 4, 70, 10, 16
    logits = torch.randn(rows, v) * 3
    logits[0] = -math.inf                     # all impossible
    logits[1, :40] = -math.inf                # -inf for the first tiles, then finite
    logits[2, ::3] = 7.0                      # many exact ties at the top
    logits[3] = 1e4 + torch.randint(-3, 4, (v,)).float()  # huge, tied
    run_max, run_sum = torch.full((rows,), -math.inf), torch.zeros(rows)
    top_vals, top_ids = torch.full((rows, n), -math.inf), torch.full((rows, n), -1, dtype=torch.int64)
    targets = torch.tensor([3, 5, 69, 0])
    tl = torch.full((rows,), math.nan)
    for v0 in range(0, v, tile):
        C.stream_reduce_tile_cpu(logits[:, v0:v0 + tile], v0, run_max, run_sum, top_vals, top_ids, targets, tl,
                                 None, None, 2)
    lse = run_max.double() + run_sum.double().log()
    want_lse = torch.logsumexp(logits.double(), -1)
    assert torch.isneginf(lse[0]) and not torch.isnan(run_sum).any()
    torch.testing.assert_close(lse[1:], want_lse[1:], atol=1e-3 * 4, rtol=1e-6)
    vals, ids = torch.sort(logits, dim=-1, descending=True, stable=True)
    assert torch.equal(top_ids, ids[:, :n]) and torch.equal(top_vals, vals[:, :n])
    assert torch.equal(tl, logits[torch.arange(rows), targets])
    with pytest.raises(ValueError, match="top_ids"):
        C.stream_reduce_tile_cpu(logits[:, :tile], 0, run_max, run_sum, top_vals, top_ids.int())


# ---- input validation --------------------------------------------------------------------------

def test_bad_inputs_raise_value_error():
    t, h, v = 4, 8, 20
    hidden, weight = _model(t, h, v, "cpu")
    ids, lp = _ref_topn(hidden, weight, 4)
    f = pq.ops.stream_logprobs
    with pytest.raises(ValueError, match="larger than the vocabulary"):
        f(hidden, weight, top_n=v + 1)
    with pytest.raises(ValueError, match="top_n"):
        f(hidden, weight, top_n=0)
    dup = ids.clone()
    dup[2, 3] = dup[2, 0]
    with pytest.raises(ValueError, match="duplicated ids in row 2"):
        f(hidden, weight, ref_ids=dup, ref_logprobs=lp)
    with pytest.raises(ValueError, match="out of range"):
        f(hidden, weight, ref_ids=ids + v, ref_logprobs=lp)
    with pytest.raises(ValueError, match="targets has ids out of range"):
        f(hidden, weight, targets=torch.full((t,), -1))
    with pytest.raises(ValueError, match="> 0"):
        f(hidden, weight, ref_ids=ids, ref_logprobs=lp.abs() + 0.01)
    big = lp.clone()
    big[1] = math.log(0.3)  # 4 x 0.3 = 1.2 > 1
    with pytest.raises(ValueError, match="sum to more than 1"):
        f(hidden, weight, ref_ids=ids, ref_logprobs=big)
    with pytest.raises(ValueError, match="shape"):
        f(hidden, weight, ref_ids=ids, ref_logprobs=lp[:, :3])
    with pytest.raises(ValueError, match="needs ref_ids"):
        f(hidden, weight, ref_logprobs=lp)
    with pytest.raises(ValueError, match="H=8"):
        f(hidden[:, :5], weight)
    with pytest.raises(ValueError, match="dtype"):
        f(hidden.double(), weight)
    with pytest.raises(ValueError, match="2-D"):
        f(hidden[0], weight)
    with pytest.raises(ValueError, match="is on"):
        f(hidden, weight.to("meta"))
    with pytest.raises(ValueError, match="vocab_tile"):
        f(hidden, weight, vocab_tile=0)
    with pytest.raises(ValueError, match="unknown backend"):
        f(hidden, weight, backend="nope")
    with pytest.raises(ValueError, match="V=20 but the candidate has V=21"):
        pq.ops.stream_kl_exact(hidden, weight, hidden, torch.randn(21, h))
    with pytest.raises(ValueError, match="T=4 tokens but the candidate has T=3"):
        pq.ops.stream_kl_exact(hidden, weight, hidden[:3], weight)
    from pyquant.ops.head import LMHead

    with pytest.raises(ValueError, match=r"bias must be a floating-point tensor of shape \[20\]"):
        f(hidden, LMHead(weight, torch.zeros(19)))
    with pytest.raises(ValueError, match="bias must be a floating-point"):
        f(hidden, LMHead(weight, torch.zeros(20, dtype=torch.int64)))
    with pytest.raises(ValueError, match="bias is on meta"):
        f(hidden, LMHead(weight, torch.zeros(20, device="meta")))
    for cap in (0.0, -1.0, math.inf, True, "30"):
        with pytest.raises(ValueError, match="softcap must be a finite number > 0"):
            f(hidden, LMHead(weight, None, cap))
    with pytest.raises(ValueError, match="softcap"):
        pq.ops.stream_kl_exact(hidden, weight, hidden, LMHead(weight, None, math.nan))


def test_cpu_tile_reducer_scalar_isa(tmp_path):
    """The scalar primitives (PYQUANT_ISA=scalar, read once per process) give the AVX2 path's results."""
    C = pytest.importorskip("pyquant._C")
    if not hasattr(C, "stream_reduce_tile_cpu"):
        pytest.skip("pyquant._C has no stream_reduce_tile_cpu")
    import os
    import subprocess
    import sys

    code = f"""
import math, torch, pyquant._C as C
assert C.cpu_isa() == "scalar"
torch.manual_seed(0)
rows, v, n, tile = 5, 301, 24, 37
x = torch.randn(rows, v) * 4
x[0, :100] = -math.inf
x[1, ::7] = 9.0
st = [torch.full((rows,), -math.inf), torch.zeros(rows), torch.full((rows, n), -math.inf),
      torch.full((rows, n), -1, dtype=torch.int64)]
for v0 in range(0, v, tile):
    C.stream_reduce_tile_cpu(x[:, v0:v0 + tile], v0, *st, None, None, None, None, 1)
torch.save((x, st), {str(tmp_path / "scalar.pt")!r})
"""
    env = dict(os.environ, PYQUANT_ISA="scalar")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    x, (run_max, run_sum, top_vals, top_ids) = torch.load(tmp_path / "scalar.pt")
    vals, ids = torch.sort(x, dim=-1, descending=True, stable=True)
    assert torch.equal(top_ids, ids[:, :24]) and torch.equal(top_vals, vals[:, :24])
    torch.testing.assert_close(run_max.double() + run_sum.double().log(), torch.logsumexp(x.double(), -1),
                               atol=1e-5, rtol=1e-6)


def test_nonfinite_hidden_rows_give_nan():
    t, h, v = 6, 16, 50
    hidden, weight = _model(t, h, v, "cpu")
    ids, lp = _ref_topn(hidden, weight, 4)
    hidden[2, 3] = math.nan
    hidden[4, 0] = math.inf
    out = pq.ops.stream_logprobs(hidden, weight, top_n=4, targets=torch.zeros(t, dtype=torch.int64), ref_ids=ids,
                                 ref_logprobs=lp)
    bad = torch.tensor([False, False, True, False, True, False])
    for x in (out.logsumexp, out.target_logprobs, out.kl, out.kl_renorm, out.reject):
        assert torch.equal(torch.isnan(x), bad)
    assert torch.isnan(out.top_logprobs[bad]).all() and torch.isfinite(out.top_logprobs[~bad]).all()
