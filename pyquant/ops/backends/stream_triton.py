"""Backend "triton" of op "stream_logprobs": the fused kernel in ``pyquant.kernels.stream_topn``.

One kernel per call: logits tile (tl.dot; int8 / int4 LM heads dequantized in registers, never
through the driver) -> online log-sum-exp -> running top-N -> target / reference-id gathers. Runs
on CUDA GPUs, and on the CPU when ``TRITON_INTERPRET=1``. Imports cleanly without triton (the
probe then says why it is unavailable); the kernel module is imported on first use.
"""
from __future__ import annotations

import torch

from ...formats import QuantizedWeight
from ..head import LMHead
from .. import _native
from .._registry import register

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check(hidden, weight, top_n, targets, ref_ids) -> None:
    """ValueError naming the problem unless the raw arguments fit this backend (the public API
    validates values; this guards direct calls and the kernel's own limits)."""
    who = "stream_logprobs[triton]"
    if isinstance(weight, LMHead):
        bias = weight.bias
        if bias is not None and (bias.dim() != 1 or not bias.is_contiguous() or bias.dtype not in _DTYPES
                                 or bias.device != hidden.device):
            raise ValueError(f"{who}: the head's bias must be a contiguous 1-D float32/float16/bfloat16 tensor on "
                             f"{hidden.device}, got {bias.dtype} {list(bias.shape)} on {bias.device}")
        weight = weight.weight
        if bias is not None and bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{who}: the head's bias has {bias.shape[0]} entries but the weight has V={weight.shape[0]}")
    if hidden.dim() != 2 or not hidden.is_contiguous() or hidden.dtype not in _DTYPES:
        raise ValueError(f"{who}: hidden must be a contiguous 2-D float32/float16/bfloat16 tensor, "
                         f"got {hidden.dtype} {list(hidden.shape)}")
    if isinstance(weight, QuantizedWeight):
        if weight.device != hidden.device:
            raise ValueError(f"{who}: weight is on {weight.device} but hidden is on {hidden.device}")
        v, k = weight.shape
        if not (weight.qweight.is_contiguous() and weight.scales.is_contiguous()):
            raise ValueError(f"{who}: the QuantizedWeight's tensors must be contiguous")
    elif isinstance(weight, torch.Tensor):
        if weight.dim() != 2 or not weight.is_contiguous() or weight.dtype not in _DTYPES:
            raise ValueError(f"{who}: weight must be a contiguous 2-D float32/float16/bfloat16 tensor, "
                             f"got {weight.dtype} {list(weight.shape)}")
        if weight.device != hidden.device:
            raise ValueError(f"{who}: weight is on {weight.device} but hidden is on {hidden.device}")
        v, k = weight.shape
    else:
        raise ValueError(f"{who}: weight must be a Tensor or a QuantizedWeight, got {type(weight).__name__}")
    if k != hidden.shape[1]:
        raise ValueError(f"{who}: hidden has H={hidden.shape[1]} but the weight has H={k}")
    if not 1 <= int(top_n) <= v:
        raise ValueError(f"{who}: top_n must be in [1, V={v}], got {top_n}")
    if v >= 2**31 - 1:
        raise ValueError(f"{who}: vocabularies of 2**31 - 1 ids or more are not supported (V={v})")
    for name, ids, ndim in (("targets", targets, 1), ("ref_ids", ref_ids, 2)):
        if ids is None:
            continue
        if ids.dtype != torch.int64 or ids.dim() != ndim or ids.shape[0] != hidden.shape[0] or not ids.is_contiguous():
            raise ValueError(f"{who}: {name} must be a contiguous int64 tensor with {ndim} dims and "
                             f"{hidden.shape[0]} rows, got {ids.dtype} {list(ids.shape)}")
        if ids.device != hidden.device:
            raise ValueError(f"{who}: {name} is on {ids.device} but hidden is on {hidden.device}")


@register("stream_logprobs", "triton", devices=_native.triton_devices(), available=_native.triton_available)
def stream_logprobs_triton(hidden, weight, top_n: int, targets=None, ref_ids=None, vocab_tile: int = 128) -> dict:
    """Raw streamed statistics from the fused Triton kernel: "logsumexp" f32[T] (natural log of the
    summed exp of the logits), "top_ids" int64[T,N], "top_logits" f32[T,N] (raw logits, descending,
    ties -> lower id), "target_logits" f32[T] (if targets), "ref_logits" f32[T,Nr] (if ref_ids)."""
    _check(hidden, weight, top_n, targets, ref_ids)
    from ...kernels.stream_topn import stream_topn

    return stream_topn(hidden, weight, int(top_n), targets, ref_ids, vocab_tile=vocab_tile)
