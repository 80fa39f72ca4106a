"""Driver for the non-fused stream backends: walk the vocabulary in tiles, never hold [T, V].

For each vocabulary tile [v0, v1) and each block of tokens, the logits tile is computed with
``torch.matmul(hidden_blk, W[v0:v1].T)`` (or ``qmatmul`` on ``qw.rows(v0, v1)`` for a quantized
head) into one reused buffer, finished in place by an LMHead's bias and soft cap (ops/head.py),
and handed to a backend's *tile reducer*, which folds it into the
running state (online log-sum-exp, top-N, target/reference gathers; see
csrc/include/pyquant/stream.h). Extra memory: the [t_block, vocab_tile] buffer, one dequantized
or up-cast weight tile, and the O(T * N) state.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..formats import QuantizedWeight
from .head import as_head, bare_weight

# Chosen on the shared 2-core AVX2 machine (bench/stream_topn.py): with the default vocab_tile of
# 4096 the logits buffer is at most 1024 * 4096 * 4 B = 16 MiB (well inside the 64 MiB budget) and
# every GEMM call is large (>= 2.4 GFLOP at H=576): there each call that wakes torch's thread pool
# costs tens of ms when the cores are oversubscribed, so few large tiles beat cache-sized ones.
DEFAULT_T_BLOCK = 1024
# A head that is not float32 (bf16/fp16, or quantized and dequantized by qmatmul's fallback) gets a
# float32 copy of each weight tile: its vocabulary tile is capped so that copy stays <= 16 MiB.
CAST_TILE_BYTES = 16 << 20
KL_T_BLOCK = 256  # stream_kl_exact holds ~6 float32 temporaries of [t_block, vocab_tile]


def weight_rows(weight) -> int:
    """V: the number of rows (vocabulary entries) of a Tensor, QuantizedWeight or LMHead LM head."""
    weight = bare_weight(weight)
    return weight.out_features if isinstance(weight, QuantizedWeight) else weight.shape[0]


def logits_tile(h_blk: torch.Tensor, weight, v0: int, v1: int, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """float32 logits [rows, v1 - v0] of the head's vocabulary rows v0..v1 (h_blk float32; ``out``
    reused when given): h_blk @ weight[v0:v1].T, then an LMHead's bias and soft cap."""
    head = as_head(weight)
    weight = head.weight
    if isinstance(weight, QuantizedWeight):
        from .qmatmul import qmatmul

        y = qmatmul(h_blk, weight.rows(v0, v1))
        y = y if out is None else out.copy_(y)
    else:
        w = weight[v0:v1]
        if w.dtype != torch.float32:
            w = w.to(torch.float32)
        y = torch.matmul(h_blk, w.T, out=out)
    return head.finish_(y, v0, v1)


def vocab_tile_for(weight, vocab_tile: int) -> int:
    """The vocabulary tile the driver uses: ``vocab_tile``, capped for heads that need a float32 copy."""
    weight = bare_weight(weight)
    if isinstance(weight, torch.Tensor) and weight.dtype == torch.float32:
        return vocab_tile
    h = weight.in_features if isinstance(weight, QuantizedWeight) else weight.shape[1]
    return max(16, min(vocab_tile, CAST_TILE_BYTES // (4 * max(1, h))))


def _blocks(n: int, size: int):
    for s in range(0, n, size):
        yield s, min(n, s + size)


def stream_topn(hidden: torch.Tensor, weight, top_n: int, targets: Optional[torch.Tensor],
                ref_ids: Optional[torch.Tensor], vocab_tile: int, reduce_tile: Callable,
                t_block: Optional[int] = None) -> dict:
    """Run a tile reducer over every (vocabulary tile, token block); return the backend dict.

    ``reduce_tile(logits[rows, vt], v0, run_max, run_sum, top_vals, top_ids, targets,
    target_logits, ref_ids, ref_logits)`` updates the row slices of the state in place.
    ``t_block``: tokens per GEMM block (None: DEFAULT_T_BLOCK).
    Returns "logsumexp" [T] f32, "top_ids" [T, N] int64, "top_logits" [T, N] f32 (raw logits),
    and "target_logits" [T] / "ref_logits" [T, Nr] (f32) when asked.
    """
    t, dev = hidden.shape[0], hidden.device
    v = weight_rows(weight)
    f32 = dict(dtype=torch.float32, device=dev)
    run_max = torch.full((t,), -math.inf, **f32)
    run_sum = torch.zeros(t, **f32)
    top_vals = torch.full((t, top_n), -math.inf, **f32)
    top_ids = torch.full((t, top_n), -1, dtype=torch.int64, device=dev)
    target_logits = torch.full((t,), math.nan, **f32) if targets is not None else None
    ref_logits = torch.full(tuple(ref_ids.shape), math.nan, **f32) if ref_ids is not None else None
    tb = max(1, min(t_block or DEFAULT_T_BLOCK, t))
    vt = max(1, min(vocab_tile_for(weight, vocab_tile), v))
    buf = torch.empty(tb * vt, **f32)
    h32 = hidden if hidden.dtype == torch.float32 else None  # up-cast per block otherwise (no [T, H] copy)
    for v0, v1 in _blocks(v, vt):
        for t0, t1 in _blocks(t, tb):
            h_blk = h32[t0:t1] if h32 is not None else hidden[t0:t1].to(torch.float32)
            out = buf[: (t1 - t0) * (v1 - v0)].view(t1 - t0, v1 - v0)
            tile = logits_tile(h_blk, weight, v0, v1, out)
            sl = slice(t0, t1)
            reduce_tile(tile, v0, run_max[sl], run_sum[sl], top_vals[sl], top_ids[sl],
                        None if targets is None else targets[sl], None if targets is None else target_logits[sl],
                        None if ref_ids is None else ref_ids[sl], None if ref_ids is None else ref_logits[sl])
    out = {"logsumexp": run_max + torch.log(run_sum), "top_ids": top_ids, "top_logits": top_vals}
    if targets is not None:
        out["target_logits"] = target_logits
    if ref_ids is not None:
        out["ref_logits"] = ref_logits
    return out


def _tile_lse(h_blk, weight, v0, v1) -> torch.Tensor:
    return torch.logsumexp(logits_tile(h_blk, weight, v0, v1), dim=-1)


def stream_kl_exact(h_ref: torch.Tensor, w_ref, h_cand: torch.Tensor, w_cand, vocab_tile: int,
                    t_block: Optional[int] = None) -> dict:
    """Full-vocabulary KL(ref || cand) and total variation per token, streamed in plain PyTorch.

    Two passes over the vocabulary tiles: the log-sum-exps of both models, then the KL and TV sums
    (accumulated in float64). Returns {"kl": float64 [T] (nats), "tv": float64 [T]}.
    Extra memory: a few [t_block, vocab_tile] float32 temporaries.
    """
    t, v = h_ref.shape[0], weight_rows(w_ref)
    tb = max(1, min(t_block or KL_T_BLOCK, t))
    vt = max(1, min(vocab_tile_for(w_ref, vocab_tile), vocab_tile_for(w_cand, vocab_tile), v))
    kl = torch.zeros(t, dtype=torch.float64, device=h_ref.device)
    tv = torch.zeros_like(kl)
    for t0, t1 in _blocks(t, tb):
        a = h_ref[t0:t1].to(torch.float32)
        b = h_cand[t0:t1].to(torch.float32)
        lse_a = torch.full((t1 - t0,), -math.inf, dtype=torch.float32, device=a.device)
        lse_b = lse_a.clone()
        for v0, v1 in _blocks(v, vt):
            lse_a = torch.logaddexp(lse_a, _tile_lse(a, w_ref, v0, v1))
            lse_b = torch.logaddexp(lse_b, _tile_lse(b, w_cand, v0, v1))
        for v0, v1 in _blocks(v, vt):
            lp = logits_tile(a, w_ref, v0, v1) - lse_a[:, None]
            lq = logits_tile(b, w_cand, v0, v1) - lse_b[:, None]
            p = lp.exp()
            terms = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p))  # 0 log 0 = 0
            kl[t0:t1] += terms.sum(-1, dtype=torch.float64)
            tv[t0:t1] += 0.5 * (p - lq.exp()).abs().sum(-1, dtype=torch.float64)
    return {"kl": kl, "tv": tv}
