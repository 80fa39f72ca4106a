"""Backend "cuda" of op "stream_logprobs": the shared tile driver (ops/stream_driver.py) with the
CUDA tile reducer ``pyquant._C.stream_reduce_tile_cuda`` (csrc/cuda/stream_topn.cu).

Each logits tile comes from torch.matmul (or qmatmul for a quantized head) on the GPU; the reducer
folds it into the running state on torch's current CUDA stream, so no synchronisation is needed
between the GEMM and the reduction. Imports cleanly without CUDA (the probe says why).

Also registers "cuda" for "stream_kl_exact": the driver's tile-streamed PyTorch implementation
run on the GPU (pure torch, so it needs a CUDA device but not the extension).
"""
from __future__ import annotations

import torch

from .. import _native
from .._registry import register
from ..stream_driver import stream_kl_exact, stream_topn

MAX_TOP_N = 64          # pyquant::kStreamCudaMaxTopN
T_BLOCK = 4096          # tokens per driver block on a GPU: large GEMMs, [t_block, vocab_tile] buffer
KL_T_BLOCK = 1024       # stream_kl_exact holds ~6 float32 [t_block, vocab_tile] temporaries


def _reduce_tile_cuda(logits, v0, run_max, run_sum, top_vals, top_ids, targets, target_logits, ref_ids, ref_logits):
    """Fold one float32 logits tile [rows, vt] (ids v0..v0+vt-1) into the state, in place, queued
    on torch's current stream of the tile's device."""
    stream = torch.cuda.current_stream(logits.device).cuda_stream
    _native.native().stream_reduce_tile_cuda(logits, int(v0), run_max, run_sum, top_vals, top_ids, targets,
                                             target_logits, ref_ids, ref_logits, int(stream))


@register("stream_logprobs", "cuda", devices=("cuda",), available=_native.cuda_available)
def stream_logprobs_cuda(hidden, weight, top_n: int, targets=None, ref_ids=None, vocab_tile: int = 2048) -> dict:
    """Raw streamed statistics (the backend dict of ops/stream.py): "logsumexp" f32[T] (nats),
    "top_ids" int64[T,N], "top_logits" f32[T,N] (raw logits, descending, ties -> lower id),
    "target_logits" f32[T] (if targets), "ref_logits" f32[T,Nr] (if ref_ids). N <= 64."""
    if not 1 <= int(top_n) <= MAX_TOP_N:
        raise ValueError(f"stream_logprobs[cuda]: top_n must be in [1, {MAX_TOP_N}], got {top_n}")
    if hidden.device.type != "cuda":
        raise ValueError(f"stream_logprobs[cuda]: hidden must be on a CUDA device, got {hidden.device}")
    with torch.cuda.device(hidden.device):
        return stream_topn(hidden, weight, int(top_n), targets, ref_ids, vocab_tile, _reduce_tile_cuda,
                           t_block=T_BLOCK)


def _torch_cuda_available() -> "tuple[bool, str]":
    return (True, "") if torch.cuda.is_available() else (False, "no CUDA device visible to torch")


@register("stream_kl_exact", "cuda", devices=("cuda",), available=_torch_cuda_available)
def stream_kl_exact_cuda(h_ref, w_ref, h_cand, w_cand, vocab_tile: int = 2048) -> dict:
    """{"kl", "tv"} float64 [T]: full-vocabulary KL(ref || cand) (nats) and total variation, streamed
    over vocabulary tiles on the GPU (never [T, V])."""
    with torch.cuda.device(h_ref.device):
        return stream_kl_exact(h_ref, w_ref, h_cand, w_cand, vocab_tile, t_block=KL_T_BLOCK)
