"""Backend "triton" of op "qmatmul": the Triton kernel in ``pyquant.kernels.qmatmul``.

Runs on CUDA GPUs, and on the CPU when ``TRITON_INTERPRET=1`` (how CI tests it). Imports cleanly
without triton: it then registers with a probe that says why it is unavailable. The kernel module
is imported on first use, so the interpreter setting is read when the kernel is first needed.
"""
from __future__ import annotations

import os

import torch

from ...formats import SUPPORTED_GROUP_SIZES
from .. import _native
from .._registry import register, register_prepare

_X_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_weight_args(qweight, scales, zeros, bits: int, group_size: int, in_features: int, who: str) -> None:
    """Raise ValueError naming the problem unless the raw weight tensors form a valid qmatmul weight:
    formats, shapes, and one device for all of it. Shared by the GPU backends (triton, cuda), whose
    prepare checks a weight once; they receive raw tensors, not a QuantizedWeight."""
    if scales.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"{who}: scales must be float32 or float16, got {scales.dtype}")
    n = qweight.shape[0] if qweight.dim() == 2 else -1
    if bits == 8:
        if qweight.dtype != torch.int8 or tuple(qweight.shape) != (n, in_features):
            raise ValueError(f"{who}: int8 qweight must be int8 [N, {in_features}], got {qweight.dtype} {list(qweight.shape)}")
        if tuple(scales.shape) != (n,):
            raise ValueError(f"{who}: int8 scales must be [{n}], got {list(scales.shape)}")
        if zeros is not None:
            raise ValueError(f"{who}: int8 is symmetric: zeros must be None")
    elif bits == 4:
        if group_size not in SUPPORTED_GROUP_SIZES:
            raise ValueError(f"{who}: unsupported int4 group size {group_size!r}: use one of {SUPPORTED_GROUP_SIZES}")
        ng = -(-in_features // group_size)
        if qweight.dtype != torch.uint8 or tuple(qweight.shape) != (n, ng * group_size // 2):
            raise ValueError(f"{who}: int4 qweight must be uint8 [N, {ng * group_size // 2}], "
                             f"got {qweight.dtype} {list(qweight.shape)}")
        if tuple(scales.shape) != (n, ng):
            raise ValueError(f"{who}: int4 scales must be [{n}, {ng}], got {list(scales.shape)}")
        if zeros is not None and (zeros.dtype != torch.uint8 or tuple(zeros.shape) != (n, ng)):
            raise ValueError(f"{who}: int4 zeros must be uint8 [{n}, {ng}], got {zeros.dtype} {list(zeros.shape)}")
    else:
        raise ValueError(f"{who}: unsupported bit width {bits!r}: use 8 or 4")
    for name, t in (("scales", scales), ("zeros", zeros)):
        if t is not None and t.device != qweight.device:
            raise ValueError(f"{who}: {name} is on {t.device} but qweight is on {qweight.device}")


def check_call_args(x, bias, qweight, in_features: int, who: str) -> None:
    """Raise ValueError naming the problem unless x and bias fit a weight already checked (per call)."""
    if x.dim() != 2:
        raise ValueError(f"{who}: x must be 2-D [M, K], got shape {list(x.shape)}")
    if x.dtype not in _X_DTYPES:
        raise ValueError(f"{who}: unsupported activation dtype {x.dtype} (use float32, bfloat16 or float16)")
    if x.shape[1] != in_features:
        raise ValueError(f"{who}: x has K={x.shape[1]} but the weight has in_features={in_features}")
    if qweight.device != x.device:
        raise ValueError(f"{who}: qweight is on {qweight.device} but x is on {x.device}")
    if bias is not None:
        if tuple(bias.shape) != (qweight.shape[0],):
            raise ValueError(f"{who}: bias must have shape [{qweight.shape[0]}], got {list(bias.shape)}")
        if bias.device != x.device:
            raise ValueError(f"{who}: bias is on {bias.device} but x is on {x.device}")


def _unit_last_stride(t):
    """t itself when its last dimension has unit stride (row slices are fine), else a contiguous copy."""
    if t is None or t.dim() == 0 or t.numel() == 0 or t.stride(-1) == 1:
        return t
    return t.contiguous()


@register("qmatmul", "triton", devices=_native.triton_devices(), available=_native.triton_available)
def qmatmul_triton(x, qweight, scales, zeros, bias, bits: int, group_size: int, in_features: int) -> torch.Tensor:
    """y[M, N] = x[M, K] @ dequantize(W).T (+ bias) with the Triton kernel; fp32 accumulation, x's dtype out.

    Same signature and semantics as ``pyquant.ops.reference.qmatmul``. Raises ValueError on bad input.
    """
    return prepare(qweight, scales, zeros, bits, group_size, in_features)(x, bias)


@register_prepare("qmatmul", "triton")
def prepare(qweight, scales, zeros, bits: int, group_size: int, in_features: int):
    """``run(x, bias) -> y``: the weight checked once; each call checks x and bias. (A weight without
    unit last strides is copied per call, not here, so in-place changes to it are always seen.)"""
    who = "qmatmul[triton]"
    check_weight_args(qweight, scales, zeros, bits, group_size, in_features, who)

    def run(x: torch.Tensor, bias):
        check_call_args(x, bias, qweight, in_features, who)
        interpret = os.environ.get("TRITON_INTERPRET") == "1"
        if x.device.type != "cuda" and not interpret:
            raise ValueError(f"{who}: x is on {x.device}; the Triton backend needs a CUDA device "
                             "(or TRITON_INTERPRET=1 for the CPU interpreter)")
        from ...kernels import qmatmul as kq

        x_, q, s, z = (_unit_last_stride(t) for t in (x, qweight, scales, zeros))
        return kq.qmatmul(x_, q, s, z, None if bias is None else bias.contiguous(), bits, group_size, in_features,
                          interpret=interpret)

    return run
