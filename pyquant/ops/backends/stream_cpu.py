"""CPU backend of stream_logprobs: the tile driver (ops/stream_driver.py) + the C++ OpenMP tile
reducer ``pyquant._C.stream_reduce_tile_cpu`` (csrc/cpu/stream*.cpp). Also registers the
tile-streamed PyTorch ``stream_kl_exact`` as "cpu"."""
from __future__ import annotations

import os

import torch

from .. import stream_driver
from .._native import cpu_available, native
from .._registry import register


# Threads of the tile reducer. The reduction is ~5% of the tile's GEMM time single-threaded; on this
# shared 2-core machine a second OpenMP team (ours, beside torch's) costs more in wake-ups and
# barriers than it saves (bench/stream_topn.py: 1 ms vs 20 ms per 256 x 2048 tile), so 1 by default.
# PYQUANT_STREAM_THREADS overrides it (0: torch.get_num_threads()).
REDUCER_THREADS = int(os.environ.get("PYQUANT_STREAM_THREADS", "1"))


def _reduce_tile_cpu(logits, v0, run_max, run_sum, top_vals, top_ids, targets, target_logits, ref_ids, ref_logits):
    native().stream_reduce_tile_cpu(logits, v0, run_max, run_sum, top_vals, top_ids, targets, target_logits,
                                    ref_ids, ref_logits, REDUCER_THREADS or torch.get_num_threads())


@register("stream_logprobs", "cpu", devices=("cpu",), available=cpu_available)
def stream_logprobs_cpu(hidden, weight, top_n, targets, ref_ids, vocab_tile):
    """Backend dict of stream_logprobs (see ops/stream.py), float32, computed tile by tile on the CPU."""
    return stream_driver.stream_topn(hidden, weight, top_n, targets, ref_ids, vocab_tile, _reduce_tile_cpu)


@register("stream_kl_exact", "cpu", devices=("cpu",))
def stream_kl_exact_cpu(h_ref, w_ref, h_cand, w_cand, vocab_tile):
    """{"kl", "tv"} float64 [T]: full-vocabulary KL(ref || cand) and total variation, streamed (PyTorch)."""
    return stream_driver.stream_kl_exact(h_ref, w_ref, h_cand, w_cand, vocab_tile)
