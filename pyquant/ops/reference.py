"""Reference implementations: plain PyTorch, clear and slow, the oracle every backend is tested
against (and the fallback that runs anywhere). Read this file first to know what an op means."""
from __future__ import annotations

from typing import Optional

import torch

from ..formats import unpack_int4


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor], bits: int,
               group_size: int, in_features: int, dtype=torch.float32) -> torch.Tensor:
    """The weight [N, K] a packed format represents (see pyquant/formats.py), in ``dtype``."""
    s = scales.to(dtype)
    if bits == 8:
        return qweight.to(dtype) * s[:, None]
    codes = unpack_int4(qweight)[:, :in_features].to(dtype)
    z = (zeros.to(dtype) if zeros is not None else torch.full_like(s, 8.0))
    z = z.repeat_interleave(group_size, dim=1)[:, :in_features]
    s = s.repeat_interleave(group_size, dim=1)[:, :in_features]
    return (codes - z) * s


def qmatmul(x: torch.Tensor, qweight, scales, zeros, bias, bits: int, group_size: int, in_features: int) -> torch.Tensor:
    """y[M, N] = x[M, K] @ dequantize(W).T (+ bias), computed in float32, returned in x's dtype."""
    w = dequantize(qweight, scales, zeros, bits, group_size, in_features, torch.float32)
    y = x.to(torch.float32) @ w.T
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)
