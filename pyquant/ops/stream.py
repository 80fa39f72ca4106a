"""Streaming top-N log-softmax and KL over an LM head, without materializing the [T, V] logits.

Public entry points: ``stream_logprobs`` (log-sum-exp, top-N, target and reference gathers, the
top-N KL estimator, rejection rate, top-1 agreement) and ``stream_kl_exact`` (full-vocabulary
KL and total variation). Definitions: DESIGN.md "Top-N KL estimator" and "Token rejection rate".

Backends register ``fn(hidden[T,H], weight, top_n, targets, ref_ids, vocab_tile) -> dict`` (weight:
a bare Tensor / QuantizedWeight, or an LMHead with a bias or a soft cap, ops/head.py) with
"logsumexp" [T], "top_ids" [T,N] int64, "top_logits" [T,N] (RAW logits: the head's output before
the log-softmax; sorted descending, ties: lower id first), "target_logits" [T] (if targets), "ref_logits" [T,Nr] (if ref_ids). This module
validates the inputs once, turns raw logits into log-probs and computes every statistic in
float64 from those O(T*N) arrays, so no backend re-implements a formula.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Optional

import torch

from ..formats import QuantizedWeight
from . import reference
from ._registry import register, resolve
from .head import LMHead, check_head_extras

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DEFAULT_VOCAB_TILE = 4096  # vocabulary rows per tile (see ops/stream_driver.py)
# Resolution of the rest buckets: p_rest and q_rest come from float32 log-probs, so masses below
# this are rounding noise. q_rest is floored here inside the log (the estimator stays a lower
# bound of the full KL and stays finite when both rests are noise).
REST_FLOOR = 1e-7
LOGPROB_SLACK = 1e-4  # reference log-probs may exceed 0, and their probabilities sum past 1, by this much

register("stream_logprobs", "reference")(reference.stream_logprobs)
register("stream_kl_exact", "reference")(reference.stream_kl_exact)


@dataclasses.dataclass
class StreamOutput:
    """Per-token results of ``stream_logprobs`` (log-probs in nats, float32; statistics float64).

    logsumexp [T]; top_ids [T, N] int64 and top_logprobs [T, N] (sorted descending, ties: lower
    id first); target_logprobs [T] if targets were given; with ref_ids: ref_logprobs_cand [T, Nr]
    (this model's log-probs of the reference ids) and top1_agree [T] bool; with ref_logprobs
    too: kl [T] (N+1-bucket KL(ref || this), nats), kl_renorm [T] (both renormalized over the
    reference ids, nats), reject [T] (total variation over the N+1 buckets, a probability).
    ``backend`` names the backend that ran.
    """

    logsumexp: torch.Tensor
    top_ids: torch.Tensor
    top_logprobs: torch.Tensor
    target_logprobs: Optional[torch.Tensor] = None
    ref_logprobs_cand: Optional[torch.Tensor] = None
    kl: Optional[torch.Tensor] = None
    kl_renorm: Optional[torch.Tensor] = None
    reject: Optional[torch.Tensor] = None
    top1_agree: Optional[torch.Tensor] = None
    backend: str = ""


@dataclasses.dataclass
class KLExactOutput:
    """Per-token full-vocabulary KL(ref || cand) [T] (nats) and total variation tv [T] (probability)."""

    kl: torch.Tensor
    tv: torch.Tensor
    backend: str = ""


# ---- validation --------------------------------------------------------------------------------

def _check_head(hidden, weight, what: str) -> "tuple[int, int, int]":
    """Validate hidden [T, H] against weight [V, H] (or an LMHead's weight, bias and cap); return (T, H, V)."""
    if isinstance(weight, LMHead):
        t, h, v = _check_head(hidden, weight.weight, what)
        check_head_extras(weight, v, hidden.device, what)
        return t, h, v
    if not isinstance(hidden, torch.Tensor):
        raise ValueError(f"{what}: hidden must be a torch.Tensor, got {type(hidden).__name__}")
    if hidden.dim() != 2:
        raise ValueError(f"{what}: hidden must be 2-D [T, H], got shape {list(hidden.shape)}")
    if hidden.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{what}: unsupported hidden dtype {hidden.dtype} (use float32, bfloat16 or float16)")
    if isinstance(weight, QuantizedWeight):
        v, h, dev = weight.out_features, weight.in_features, weight.device
    elif isinstance(weight, torch.Tensor):
        if weight.dim() != 2:
            raise ValueError(f"{what}: weight must be 2-D [V, H], got shape {list(weight.shape)}")
        if weight.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{what}: unsupported weight dtype {weight.dtype} (use float32, bfloat16 or float16)")
        (v, h), dev = weight.shape, weight.device
    else:
        raise ValueError(f"{what}: weight must be a Tensor [V, H], a QuantizedWeight or an LMHead, got "
                         f"{type(weight).__name__}")
    if hidden.shape[1] != h:
        raise ValueError(f"{what}: hidden has H={hidden.shape[1]} but the weight has H={h}")
    if hidden.device != dev:
        raise ValueError(f"{what}: hidden is on {hidden.device} but the weight is on {dev}")
    if v < 1:
        raise ValueError(f"{what}: the weight has no rows (V=0)")
    return hidden.shape[0], h, v


def _check_ids(ids, name: str, shape: tuple, v: int, device) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"stream_logprobs: {name} must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"stream_logprobs: {name} must be int64, got {ids.dtype}")
    if tuple(ids.shape) != shape:
        raise ValueError(f"stream_logprobs: {name} must have shape {list(shape)}, got {list(ids.shape)}")
    if ids.device != device:
        raise ValueError(f"stream_logprobs: {name} is on {ids.device} but hidden is on {device}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= v):
        raise ValueError(f"stream_logprobs: {name} has ids out of range [0, {v})")
    return ids.to(torch.int64).contiguous()


def _check_ref(ref_ids, ref_logprobs, t: int, v: int, device):
    if ref_ids is None:
        if ref_logprobs is not None:
            raise ValueError("stream_logprobs: ref_logprobs needs ref_ids (the ids they belong to)")
        return None, None
    if not isinstance(ref_ids, torch.Tensor) or ref_ids.dim() != 2:
        raise ValueError("stream_logprobs: ref_ids must be a 2-D int64 tensor [T, Nr]")
    nr = ref_ids.shape[1]
    if nr < 1:
        raise ValueError("stream_logprobs: ref_ids has no columns")
    ref_ids = _check_ids(ref_ids, "ref_ids", (t, nr), v, device)
    if nr > 1 and t:
        s = ref_ids.sort(dim=1).values
        dup = (s[:, 1:] == s[:, :-1]).any(dim=1)
        if bool(dup.any()):
            row = int(dup.nonzero()[0, 0])
            raise ValueError(f"stream_logprobs: ref_ids has duplicated ids in row {row}")
    if ref_logprobs is None:
        return ref_ids, None
    if not isinstance(ref_logprobs, torch.Tensor) or not ref_logprobs.is_floating_point():
        raise ValueError("stream_logprobs: ref_logprobs must be a floating-point tensor [T, Nr]")
    if tuple(ref_logprobs.shape) != (t, nr):
        raise ValueError(f"stream_logprobs: ref_logprobs must have shape {[t, nr]} like ref_ids, got {list(ref_logprobs.shape)}")
    lp = ref_logprobs.to(device=device, dtype=torch.float64)
    if bool(torch.isnan(lp).any()):
        raise ValueError("stream_logprobs: ref_logprobs contains NaN")
    if bool((lp > LOGPROB_SLACK).any()):
        raise ValueError("stream_logprobs: ref_logprobs has log-probs > 0 (they must be log-probabilities)")
    if t and bool((lp.exp().sum(dim=1) > 1 + LOGPROB_SLACK).any()):
        raise ValueError("stream_logprobs: ref_logprobs' probabilities sum to more than 1 in some row")
    return ref_ids, lp


# ---- float64 statistics from the O(T*N) arrays -------------------------------------------------

def _xlogy_ratio(p: torch.Tensor, lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """p * (lp - lq) with 0 * anything = 0 (also when lp = lq = -inf)."""
    return torch.where(p > 0, p * (lp - lq), torch.zeros_like(p))


def topn_statistics(ref_logprobs: torch.Tensor, cand_logprobs: torch.Tensor) -> dict:
    """KL estimators and rejection rate from the reference's top-N log-probs and the candidate's
    log-probs of the same ids (both [T, N], full-softmax, nats).

    Returns float64 [T] tensors: "kl" (N+1 buckets: the N ids and the rest), "kl_renorm" (both
    renormalized over the N ids) and "reject" (total variation over the N+1 buckets).
    """
    lp = ref_logprobs.to(torch.float64).clamp(max=0.0)
    lq = cand_logprobs.to(torch.float64).clamp(max=0.0)
    p, q = lp.exp(), lq.exp()
    p_rest = (1.0 - p.sum(-1)).clamp(min=0.0)  # clamp tiny negatives from rounding
    q_rest = (1.0 - q.sum(-1)).clamp(min=0.0)
    rest = torch.where(p_rest > 0, p_rest * (p_rest.log() - q_rest.clamp(min=REST_FLOOR).log()),
                       torch.zeros_like(p_rest))
    kl = _xlogy_ratio(p, lp, lq).sum(-1) + rest
    lp_n = lp - torch.logsumexp(lp, -1, keepdim=True)
    lq_n = lq - torch.logsumexp(lq, -1, keepdim=True)
    kl_renorm = _xlogy_ratio(lp_n.exp(), lp_n, lq_n).sum(-1)
    no_q = torch.isneginf(lq).all(-1) & ~torch.isneginf(lp).all(-1)  # candidate has no mass on the ids
    kl_renorm = torch.where(no_q, torch.full_like(kl_renorm, float("inf")), kl_renorm)
    reject = 0.5 * ((p - q).abs().sum(-1) + (p_rest - q_rest).abs())
    # Both are KL divergences of discrete distributions, so >= 0: a negative value is rounding
    # (e.g. -1e-9 for identical models) and is clamped, as stream_kl_exact does (NaN stays NaN).
    return {"kl": kl.clamp(min=0.0), "kl_renorm": kl_renorm.clamp(min=0.0), "reject": reject}


@contextlib.contextmanager
def _serial(device):
    """Run the O(T*N) validation and statistics on one CPU thread: these are many tiny ops, and
    waking torch's thread pool for each costs more than the op (tens of ms each on a loaded machine)."""
    if getattr(device, "type", "cpu") != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# ---- public API --------------------------------------------------------------------------------

def stream_logprobs(hidden: torch.Tensor, weight, top_n: int = 16, targets: Optional[torch.Tensor] = None,
                    ref_ids: Optional[torch.Tensor] = None, ref_logprobs: Optional[torch.Tensor] = None,
                    vocab_tile: Optional[int] = None, backend: str = "auto") -> StreamOutput:
    """Per-token log-softmax statistics of ``logits = hidden @ weight.T`` without materializing [T, V].

    hidden [T, H] (fp32/bf16/fp16); weight [V, H] Tensor or QuantizedWeight, or an ``LMHead``
    (ops/head.py: a weight with a bias [V] and/or a soft cap after the product); top_n N in [1, V];
    targets [T] int64 (next tokens); ref_ids [T, Nr] int64 and ref_logprobs [T, Nr] (a stored
    reference top-N: full-softmax log-probs). Returns a StreamOutput (log-probs in nats).
    ``backend``: "auto" or a name from ``pq.ops.available_backends("stream_logprobs", device)``.
    """
    t, _, v = _check_head(hidden, weight, "stream_logprobs")
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise ValueError(f"stream_logprobs: top_n must be an integer >= 1, got {top_n!r}")
    if top_n > v:
        raise ValueError(f"stream_logprobs: top_n={top_n} is larger than the vocabulary V={v}")
    tile = _check_tile(vocab_tile, "stream_logprobs")
    with _serial(hidden.device):
        if targets is not None:
            targets = _check_ids(targets, "targets", (t,), v, hidden.device)
        ref_ids, ref_lp = _check_ref(ref_ids, ref_logprobs, t, v, hidden.device)
    b = resolve("stream_logprobs", hidden.device, backend)
    raw = b.fn(hidden.contiguous(), _contiguous(weight), top_n, targets, ref_ids, tile)
    with _serial(hidden.device):
        bad_rows = _nonfinite_rows(hidden)  # NaN/Inf hidden states: NaN results, never a number
        return _finish(raw, ref_lp, ref_ids, b.name, bad_rows)


def _nonfinite_rows(hidden: torch.Tensor) -> torch.Tensor:
    """Bool [T]: rows of ``hidden`` holding a NaN or an Inf. Row-wise max and min (NaN propagates
    through both) need no [T, H] temporary, where ``isfinite(hidden).all(1)`` peaked at 1.75x the
    size of ``hidden`` (56 MiB for a 2048 x 4096 float32 block)."""
    if hidden.shape[1] == 0:
        return torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
    return ~(torch.isfinite(hidden.amax(dim=1)) & torch.isfinite(hidden.amin(dim=1)))


def _check_tile(vocab_tile, what: str) -> int:
    if vocab_tile is None:
        return DEFAULT_VOCAB_TILE
    if isinstance(vocab_tile, bool) or not isinstance(vocab_tile, int) or vocab_tile < 1:
        raise ValueError(f"{what}: vocab_tile must be a positive integer, got {vocab_tile!r}")
    return vocab_tile


def _contiguous(weight):
    """What backends get: a bare weight, or an LMHead when its logits have a bias or a cap; contiguous."""
    if isinstance(weight, LMHead):
        if weight.plain:
            return _contiguous(weight.weight)
        bias = None if weight.bias is None else weight.bias.contiguous()
        return LMHead(_contiguous(weight.weight), bias, None if weight.softcap is None else float(weight.softcap))
    return weight.contiguous() if isinstance(weight, torch.Tensor) else weight


def _finish(raw: dict, ref_lp, ref_ids, name: str, bad_rows: torch.Tensor) -> StreamOutput:
    lse = raw["logsumexp"].to(torch.float64)
    if bool(bad_rows.any()):
        lse = lse.masked_fill(bad_rows, math.nan)  # propagates to every log-prob and statistic of the row
    col = lse[:, None]
    out = StreamOutput(
        logsumexp=lse.to(torch.float32),
        top_ids=raw["top_ids"].to(torch.int64),
        top_logprobs=(raw["top_logits"].to(torch.float64) - col).to(torch.float32),
        backend=name,
    )
    if "target_logits" in raw and raw["target_logits"] is not None:
        out.target_logprobs = (raw["target_logits"].to(torch.float64) - lse).to(torch.float32)
    if ref_ids is not None:
        lq = raw["ref_logits"].to(torch.float64) - col
        out.ref_logprobs_cand = lq.to(torch.float32)
        out.top1_agree = out.top_ids[:, 0] == ref_ids[:, 0]
        if ref_lp is not None:
            stats = topn_statistics(ref_lp, lq)
            out.kl, out.kl_renorm, out.reject = stats["kl"], stats["kl_renorm"], stats["reject"]
    return out


def stream_kl_exact(h_ref: torch.Tensor, w_ref, h_cand: torch.Tensor, w_cand, vocab_tile: Optional[int] = None,
                    backend: str = "auto") -> KLExactOutput:
    """Full-vocabulary KL(ref || cand) per token (nats) and total variation, streamed over the vocabulary.

    h_ref [T, Hr] with w_ref [V, Hr]; h_cand [T, Hc] with w_cand [V, Hc] (Tensor, QuantizedWeight or LMHead).
    Returns a KLExactOutput with kl [T] and tv [T] (float64).
    """
    t, _, v = _check_head(h_ref, w_ref, "stream_kl_exact (reference)")
    t2, _, v2 = _check_head(h_cand, w_cand, "stream_kl_exact (candidate)")
    if t != t2:
        raise ValueError(f"stream_kl_exact: the reference has T={t} tokens but the candidate has T={t2}")
    if v != v2:
        raise ValueError(f"stream_kl_exact: the reference has V={v} but the candidate has V={v2}")
    if h_ref.device != h_cand.device:
        raise ValueError(f"stream_kl_exact: the reference is on {h_ref.device} but the candidate on {h_cand.device}")
    tile = _check_tile(vocab_tile, "stream_kl_exact")
    b = resolve("stream_kl_exact", h_ref.device, backend)
    raw = b.fn(h_ref.contiguous(), _contiguous(w_ref), h_cand.contiguous(), _contiguous(w_cand), tile)
    kl = raw["kl"].to(torch.float64)
    return KLExactOutput(kl=kl.clamp(min=0.0), tv=raw["tv"].to(torch.float64).clamp(0.0, 1.0), backend=b.name)
