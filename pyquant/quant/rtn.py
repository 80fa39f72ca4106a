"""Round-to-nearest (RTN) weight quantization into the formats of pyquant.formats.

The quantization grid (``int8_scales``, ``int4_grid``) and the rounding onto it (``to_codes``)
are shared with GPTQ (gptq.py), which picks the same grids, only from error-corrected weights.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..formats import QuantizedWeight, QuantSpec, pack_int4


def int8_scales(wf: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Per-row scales [N] (spec's scale dtype) of an fp32 weight [N, K]: absmax / 127 (1 for a zero row)."""
    amax = wf.abs().amax(dim=1)
    return torch.where(amax > 0, amax / 127.0, torch.ones_like(amax)).to(spec.torch_scale_dtype)


def int4_grid(wg: torch.Tensor, spec: QuantSpec, real: Optional[torch.Tensor] = None):
    """(scales [N, ng] in spec's scale dtype, zero-points [N, ng] as fp32 integers) of fp32 groups
    wg [N, ng, G]; ``real`` (same shape, bool) marks the elements that exist (None: all).

    Symmetric: scale = absmax / 7, zero 8. Asymmetric: [min(w, 0), max(w, 0)] maps onto [0, 15]:
    scale = (max - min) / 15, zero = clamp(round(-min / scale), 0, 15). An all-zero group gets scale 1.
    """
    n, ng = wg.shape[:2]
    if spec.symmetric:
        amax = wg.abs().amax(dim=2)  # padding is zero: it never raises the absmax
        scale = torch.where(amax > 0, amax / 7.0, torch.ones_like(amax)).to(spec.torch_scale_dtype)
        return scale, torch.full((n, ng), 8.0, dtype=torch.float32, device=wg.device)
    inf = torch.tensor(float("inf"), device=wg.device)
    wmax = (wg if real is None else torch.where(real, wg, -inf)).amax(dim=2).clamp(min=0)
    wmin = (wg if real is None else torch.where(real, wg, inf)).amin(dim=2).clamp(max=0)
    rng = wmax - wmin
    scale = torch.where(rng > 0, rng / 15.0, torch.ones_like(rng)).to(spec.torch_scale_dtype)
    return scale, torch.round(-wmin / scale.float()).clamp_(0, 15)


def to_codes(w: torch.Tensor, scale: torch.Tensor, zero: Optional[torch.Tensor], bits: int) -> torch.Tensor:
    """Codes (fp32 integers) of fp32 values ``w`` on the grid ``scale`` (fp32, broadcast against w) and
    ``zero`` (INT4; None for INT8): round(w / scale) clamped to [-127, 127] (INT8), or
    round(w / scale + zero) clamped to [0, 15] (INT4). Rounding is half to even."""
    if bits == 8:
        return torch.round(w / scale).clamp_(-127, 127)
    return torch.round(w / scale + zero).clamp_(0, 15)


def quantize_weight(w: torch.Tensor, spec: "QuantSpec | str") -> QuantizedWeight:
    """Round-to-nearest quantization of w [N, K] (fp32/fp16/bf16) into ``spec``'s format.

    Statistics are computed in float32 from the real elements only (the ragged last group
    included); the grid is ``int8_scales`` / ``int4_grid``. INT4 symmetric codes are
    round(w / s) + 8 clamped to [0, 15].
    """
    spec = QuantSpec.parse(spec)
    check_weight(w, "quantize_weight")
    n, k = w.shape
    wf = w.detach().to(torch.float32)
    if spec.bits == 8:
        scale = int8_scales(wf, spec)
        q = to_codes(wf, scale.float()[:, None], None, 8).to(torch.int8)
        return QuantizedWeight(spec, q.contiguous(), scale.contiguous(), None, (n, k))

    wg, rg = _groups(wf, spec)
    scale, zero = int4_grid(wg, spec, rg)
    codes = to_codes(wg, scale.float()[:, :, None], zero[:, :, None], 4)
    codes = torch.where(rg, codes, zero[:, :, None].expand_as(codes)).reshape(n, -1)
    return pack_codes(spec, codes, scale, zero, (n, k))


def _groups(w: torch.Tensor, spec: QuantSpec):
    """(groups [N, ng, G] of w [N, K] zero-padded to whole groups, mask of its real elements)."""
    n, k = w.shape
    g, ng = spec.group_size, spec.ngroups(k)
    real = torch.zeros(n, ng * g, dtype=torch.bool, device=w.device)
    real[:, :k] = True
    wp = torch.zeros(n, ng * g, dtype=w.dtype, device=w.device)
    wp[:, :k] = w
    return wp.view(n, ng, g), real.view(n, ng, g)


def int4_group_grid(w: torch.Tensor, spec: QuantSpec):
    """int4_grid of w [N, K]'s groups of spec.group_size columns (the ragged last one from its real
    elements): (scales [N, ng] in spec's scale dtype, zero-points [N, ng] as integers in w's dtype)."""
    wg, rg = _groups(w, spec)
    scale, zero = int4_grid(wg, spec, rg)
    return scale, zero.to(w.dtype)


def check_weight(w, who: str) -> None:
    """ValueError unless w is a finite 2-D floating-point tensor."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError(f"{who} needs a 2-D weight [out_features, in_features], got {getattr(w, 'shape', type(w))}")
    if w.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise ValueError(f"{who} needs a floating-point weight, got {w.dtype}")
    if not torch.isfinite(w).all():
        raise ValueError(f"{who}: the weight contains NaN or Inf")


def pack_codes(spec: QuantSpec, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, shape) -> QuantizedWeight:
    """An INT4 QuantizedWeight from codes [N, Kp] (fp32 integers, padding included), scales [N, ng]
    and zero-points [N, ng] (fp32 integers; dropped when symmetric)."""
    zeros = None if spec.symmetric else zero.to(torch.uint8).contiguous()
    return QuantizedWeight(spec, pack_int4(codes).contiguous(), scale.contiguous(), zeros, tuple(shape))
