"""Backend "cpu" of qmatmul: the C++ kernel in pyquant._C (csrc/cpu/qmatmul*.cpp).

AVX-512 / AVX2+FMA / scalar chosen at run time from the CPU's flags (``PYQUANT_ISA`` lowers it);
dequantization in registers (decode: up to decode_rows() rows, csrc/cpu/qmatmul_kernels.h: M <= 8, or
<= 24 when K >= 1024, fewer off AMD CPUs and where AMX runs) or, for more rows, into a cache-resident
panel or AMX tiles (prefill).
"""
from __future__ import annotations

import torch

from .. import _native
from .._registry import register, register_prepare


# torch._C._to_dlpack costs ~1 us where Tensor.__dlpack__ costs ~7 (its Python-level checks).
_export = getattr(torch._C, "_to_dlpack", torch.utils.dlpack.to_dlpack)


def _to_dlpack(t: torch.Tensor):
    """A DLPack capsule of ``t`` (detached: the kernels do no autograd)."""
    return _export(t.detach() if t.requires_grad else t)


@register("qmatmul", "cpu", devices=("cpu",), available=_native.cpu_available)
def qmatmul(x: torch.Tensor, qweight, scales, zeros, bias, bits: int, group_size: int, in_features: int) -> torch.Tensor:
    """y[M, N] = x[M, K] @ dequantize(W).T (+ bias) in x's dtype (fp32 accumulation), on the CPU.

    Same signature and semantics as ``pyquant.ops.reference.qmatmul``; x's rows must have a
    contiguous last dimension. Uses ``torch.get_num_threads()`` OpenMP threads.
    """
    return prepare(qweight, scales, zeros, bits, group_size, in_features)(x, bias)


@register_prepare("qmatmul", "cpu", any_rank=True, act8=True)
def prepare(qweight, scales, zeros, bits: int, group_size: int, in_features: int, act_bits: int = 0):
    """``run(x[..., K], bias) -> y[..., N]`` over a ``_C.CpuWeight`` (the weight checked once, then
    borrowed); x's leading dimensions must collapse into rows (a contiguous x does). ``act_bits=8``:
    the kernel quantizes x to int8 itself (INT4 decode: integer dot products)."""
    _C = _native.native()
    if _C is None:
        raise ValueError(f"qmatmul: backend 'cpu' is unavailable: {_native.cpu_available()[1]}")
    w = _C.CpuWeight(_to_dlpack(qweight), _to_dlpack(scales), None if zeros is None else _to_dlpack(zeros),
                     int(bits), int(group_size), int(in_features), int(act_bits or 0))
    n = w.out_features

    def run(x: torch.Tensor, bias):
        y = x.new_empty((*x.shape[:-1], n))  # 1.6 us where torch.empty(x.shape[:-1] + (n,), dtype=...) took 2.5
        w.matmul(_to_dlpack(x), None if bias is None else _to_dlpack(bias), _to_dlpack(y), torch.get_num_threads())
        return y

    return run
