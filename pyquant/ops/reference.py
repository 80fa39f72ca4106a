"""Reference implementations: plain PyTorch, clear and slow, the oracle every backend is tested
against (and the fallback that runs anywhere). Read this file first to know what an op means."""
from __future__ import annotations

from typing import Optional

import torch

from ..formats import unpack_int4
from .head import as_head, bare_weight


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor], bits: int,
               group_size: int, in_features: int, dtype=torch.float32) -> torch.Tensor:
    """The weight [N, K] a packed format represents (see pyquant/formats.py), in ``dtype``."""
    s = scales.to(dtype)
    if bits == 8:
        return qweight.to(dtype) * s[:, None]
    codes = unpack_int4(qweight)[:, :in_features].to(dtype)
    z = (zeros.to(dtype) if zeros is not None else torch.full_like(s, 8.0))
    z = z.repeat_interleave(group_size, dim=1)[:, :in_features]
    s = s.repeat_interleave(group_size, dim=1)[:, :in_features]
    return (codes - z) * s


def quantize_activations(x: torch.Tensor, block: int) -> torch.Tensor:
    """The ``-a8`` specs' activations: x[..., K] as int8 codes times a scale, returned in float32.

    Per row and per block of ``block`` consecutive columns (the last one ragged):
    s = max|x| / 127, q = clamp(round_half_even(x / s), -127, 127) (0 when s is not > 0), x ~= q * s.
    A block holding a NaN or an Inf comes out NaN (q * s with s NaN or Inf).
    """
    xf = x.to(torch.float32)
    k = xf.shape[-1]
    nb = -(-k // block)
    xb = torch.nn.functional.pad(xf, (0, nb * block - k)).reshape(*xf.shape[:-1], nb, block)
    s = xb.abs().amax(dim=-1, keepdim=True) / 127
    q = torch.where(s > 0, torch.round(xb / s), 0.0).clamp(-127, 127)
    return (q * s).reshape(*xf.shape[:-1], nb * block)[..., :k]


def with_quantized_activations(run, block: int):
    """``run(x, bias) -> y`` of a weight-only kernel as the ``-a8`` one: x quantized by
    ``quantize_activations`` (float32), y returned in x's dtype."""
    def run_a8(x, bias):
        y = run(quantize_activations(x, block), None if bias is None else bias.to(torch.float32))
        return y.to(x.dtype)
    return run_a8


def qmatmul(x: torch.Tensor, qweight, scales, zeros, bias, bits: int, group_size: int, in_features: int) -> torch.Tensor:
    """y[M, N] = x[M, K] @ dequantize(W).T (+ bias), computed in float32, returned in x's dtype."""
    w = dequantize(qweight, scales, zeros, bits, group_size, in_features, torch.float32)
    y = x.to(torch.float32) @ w.T
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)


# ---- stream_logprobs / stream_kl_exact (materialized: the [T, V] logits exist; tests only) ----

def lm_head_weight(weight, dtype=torch.float64) -> torch.Tensor:
    """The LM head's weight [V, H] as a dense tensor in ``dtype`` (a QuantizedWeight is dequantized)."""
    weight = bare_weight(weight)
    if isinstance(weight, torch.Tensor):
        return weight.to(dtype)
    return weight.dequantize(dtype)


def stream_logits(hidden: torch.Tensor, weight) -> torch.Tensor:
    """The full logits [T, V] = hidden @ weight.T (then an LMHead's bias and soft cap), in float64
    (the oracle's precision)."""
    return as_head(weight).finish_(hidden.to(torch.float64) @ lm_head_weight(weight, torch.float64).T)


def stream_logprobs(hidden: torch.Tensor, weight, top_n: int, targets=None, ref_ids=None, vocab_tile: int = 0) -> dict:
    """Backend function of ``stream_logprobs`` computed by materializing the float64 logits [T, V].

    Returns the backend dict (see ops/stream.py) in float64: "logsumexp" [T], "top_ids" [T, N]
    int64 and "top_logits" [T, N] (raw logits, sorted descending, ties: lower id first),
    "target_logits" [T] if targets, "ref_logits" [T, Nr] if ref_ids. ``vocab_tile`` is ignored.
    """
    logits = stream_logits(hidden, weight)
    out = {"logsumexp": torch.logsumexp(logits, dim=-1)}
    vals, ids = torch.sort(logits, dim=-1, descending=True, stable=True)  # stable: lower id first on ties
    out["top_logits"] = vals[:, :top_n].contiguous()
    out["top_ids"] = ids[:, :top_n].contiguous()
    if targets is not None:
        out["target_logits"] = logits.gather(1, targets.view(-1, 1)).view(-1)
    if ref_ids is not None:
        out["ref_logits"] = logits.gather(1, ref_ids)
    return out


def stream_kl_exact(h_ref: torch.Tensor, w_ref, h_cand: torch.Tensor, w_cand, vocab_tile: int = 0) -> dict:
    """Full-vocabulary KL(ref || cand) [T] (nats) and total variation [T] from materialized float64 logits."""
    lp = torch.log_softmax(stream_logits(h_ref, w_ref), dim=-1)
    lq = torch.log_softmax(stream_logits(h_cand, w_cand), dim=-1)
    p = lp.exp()
    terms = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p))  # 0 log 0 = 0
    return {"kl": terms.sum(-1), "tv": 0.5 * (p - lq.exp()).abs().sum(-1)}
