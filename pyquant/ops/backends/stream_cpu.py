"""CPU backend of stream_logprobs: the tile driver (ops/stream_driver.py) + the C++ OpenMP tile
reducer ``pyquant._C.stream_reduce_tile_cpu`` (csrc/cpu/stream*.cpp). Also registers the
tile-streamed PyTorch ``stream_kl_exact`` as "cpu"."""
from __future__ import annotations

import torch

from .. import stream_driver
from .._native import cpu_available, native
from .._registry import register


def _reduce_tile_cpu(logits, v0, run_max, run_sum, top_vals, top_ids, targets, target_logits, ref_ids, ref_logits):
    native().stream_reduce_tile_cpu(logits, v0, run_max, run_sum, top_vals, top_ids, targets, target_logits,
                                    ref_ids, ref_logits, torch.get_num_threads())


@register("stream_logprobs", "cpu", devices=("cpu",), available=cpu_available)
def stream_logprobs_cpu(hidden, weight, top_n, targets, ref_ids, vocab_tile):
    """Backend dict of stream_logprobs (see ops/stream.py), float32, computed tile by tile on the CPU."""
    return stream_driver.stream_topn(hidden, weight, top_n, targets, ref_ids, vocab_tile, _reduce_tile_cpu)


@register("stream_kl_exact", "cpu", devices=("cpu",))
def stream_kl_exact_cpu(h_ref, w_ref, h_cand, w_cand, vocab_tile):
    """{"kl", "tv"} float64 [T]: full-vocabulary KL(ref || cand) and total variation, streamed (PyTorch)."""
    return stream_driver.stream_kl_exact(h_ref, w_ref, h_cand, w_cand, vocab_tile)
