"""Backend "cuda" of op "qmatmul": the CUDA decode kernel in csrc/cuda/qmatmul.cu (pyquant._C).

Imports cleanly without CUDA (the probe in ops/_native.py says why the backend is unavailable).
"""
from __future__ import annotations

import torch

from .. import _native
from .._registry import register, register_prepare
from .qmatmul_triton import _unit_last_stride, check_call_args, check_weight_args

#: Largest M the CUDA GEMV kernel serves; larger M (prefill) goes to the Triton kernel if it can run.
MAX_DECODE_M = 8


def _prefill_runner(qweight, scales, zeros, bits: int, group_size: int, in_features: int):
    """The Triton backend's prepared runner for this weight when Triton can run, else None."""
    ok, _ = _native.triton_available()
    if not ok:
        return None
    from .qmatmul_triton import prepare as triton_prepare

    return triton_prepare(qweight, scales, zeros, bits, group_size, in_features)


@register("qmatmul", "cuda", devices=("cuda",), available=_native.cuda_available)
def qmatmul_cuda(x, qweight, scales, zeros, bias, bits: int, group_size: int, in_features: int) -> torch.Tensor:
    """y[M, N] = x[M, K] @ dequantize(W).T (+ bias) on a CUDA device; fp32 accumulation, x's dtype out.

    Same signature and semantics as ``pyquant.ops.reference.qmatmul``. For M <= 8 (decode) it runs
    the CUDA GEMV kernel; for M > 8 it delegates to the Triton kernel (tiled, tensor cores) when
    Triton is available, else it runs the CUDA kernel over slices of 8 rows (correct, but it
    re-reads the weights once per slice). Raises ValueError on bad input.
    """
    return prepare(qweight, scales, zeros, bits, group_size, in_features)(x, bias)


@register_prepare("qmatmul", "cuda")
def prepare(qweight, scales, zeros, bits: int, group_size: int, in_features: int):
    """``run(x, bias) -> y``: the weight checked once (a decode call's Python costs as much as the
    kernel); each call checks x and bias. As in the Triton backend, a weight without unit last
    strides is copied per call, not here, so in-place changes to it are always seen."""
    who = "qmatmul[cuda]"
    check_weight_args(qweight, scales, zeros, bits, group_size, in_features, who)
    C = _native.native()
    if C is None or not hasattr(C, "qmatmul_cuda"):
        raise ValueError(f"{who}: unavailable: {_native.cuda_available()[1]}")
    n, g = qweight.shape[0], group_size if bits == 4 else 0
    prefill = _prefill_runner(qweight, scales, zeros, bits, group_size, in_features)  # M > 8

    def run(x: torch.Tensor, bias):
        check_call_args(x, bias, qweight, in_features, who)
        if x.device.type != "cuda":
            raise ValueError(f"{who}: x is on {x.device}; the cuda backend needs CUDA tensors")
        if x.shape[0] > MAX_DECODE_M and prefill is not None:
            return prefill(x, bias)
        x_, q, s, z = (None if t is None else _unit_last_stride(t.detach()) for t in (x, qweight, scales, zeros))
        if bits == 8:
            s = s.contiguous()
        b = None if bias is None else bias.detach().to(x.dtype).contiguous()
        y = torch.empty((x.shape[0], n), dtype=x.dtype, device=x.device)
        if y.numel() == 0:
            return y
        with torch.cuda.device(x.device):
            stream = torch.cuda.current_stream(x.device).cuda_stream
            C.qmatmul_cuda(x_, q, s, z, b, y, bits, g, in_features, stream)
        return y

    return run
