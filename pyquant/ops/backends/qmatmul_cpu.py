"""Backend "cpu" of qmatmul: the C++ kernel in pyquant._C (csrc/cpu/qmatmul*.cpp).

AVX-512 / AVX2+FMA / scalar chosen at run time from the CPU's flags (``PYQUANT_ISA`` lowers it);
dequantization in registers (decode, M <= 8) or into a cache-resident panel (prefill).
"""
from __future__ import annotations

import torch

from .. import _native
from .._registry import register


class _DLPack:
    """A DLPack producer around an exported capsule: ``torch._C._to_dlpack`` costs ~1 us where
    ``Tensor.__dlpack__`` costs ~7 us (its Python-level checks), per tensor per call."""

    __slots__ = ("capsule",)

    def __init__(self, t: torch.Tensor):
        self.capsule = _to_dlpack(t.detach() if t.requires_grad else t)

    def __dlpack__(self, *args, **kwargs):
        return self.capsule


def _to_dlpack(t):
    return torch.utils.dlpack.to_dlpack(t)


_to_dlpack = getattr(torch._C, "_to_dlpack", _to_dlpack)


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
    _C.qmatmul_cpu(_DLPack(x), _DLPack(qweight), _DLPack(scales), None if zeros is None else _DLPack(zeros),
                   None if bias is None else _DLPack(bias), int(bits), int(group_size), int(in_features), _DLPack(y),
                   torch.get_num_threads())
    return y
