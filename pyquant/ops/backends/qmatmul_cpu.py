"""Backend "cpu" of qmatmul: the C++ kernel in pyquant._C (csrc/cpu/qmatmul*.cpp).

AVX-512 / AVX2+FMA / scalar chosen at run time from the CPU's flags (``PYQUANT_ISA`` lowers it);
dequantization in registers (decode, M <= 8) or into a cache-resident panel (prefill).
"""
from __future__ import annotations

import torch

from .. import _native
from .._registry import register


@register("qmatmul", "cpu", devices=("cpu",), available=_native.cpu_available)
def qmatmul(x: torch.Tensor, qweight, scales, zeros, bias, bits: int, group_size: int, in_features: int) -> torch.Tensor:
    """y[M, N] = x[M, K] @ dequantize(W).T (+ bias) in x's dtype (fp32 accumulation), on the CPU.

    Same signature and semantics as ``pyquant.ops.reference.qmatmul``; x's rows must have a
    contiguous last dimension. Uses ``torch.get_num_threads()`` OpenMP threads.
    """
    _C = _native.native()
    if _C is None:
        raise ValueError(f"qmatmul: backend 'cpu' is unavailable: {_native.cpu_available()[1]}")
    y = torch.empty((x.shape[0], qweight.shape[0]), dtype=x.dtype, device=x.device)
    det = lambda t: None if t is None else t.detach()  # noqa: E731  (DLPack refuses tensors that need grad)
    _C.qmatmul_cpu(x.detach(), qweight.detach(), scales.detach(), det(zeros), det(bias), int(bits), int(group_size),
                   int(in_features), y, torch.get_num_threads())
    return y
