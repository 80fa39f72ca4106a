"""Round-to-nearest (RTN) weight quantization into the formats of pyquant.formats."""
from __future__ import annotations

import torch

from ..formats import QuantizedWeight, QuantSpec, pack_int4


def quantize_weight(w: torch.Tensor, spec: "QuantSpec | str") -> QuantizedWeight:
    """Round-to-nearest quantization of w [N, K] (fp32/fp16/bf16) into ``spec``'s format.

    Statistics are computed in float32 from the real elements only (the ragged last group
    included). INT8: scale = absmax / 127. INT4 symmetric: scale = absmax / 7, codes
    round(w / s) + 8 clamped to [0, 15]. INT4 asymmetric: the group's range [min(w, 0), max(w, 0)]
    maps onto [0, 15]: scale = (max - min) / 15, zero = clamp(round(-min / scale), 0, 15).
    An all-zero row or group gets scale 1 (it dequantizes to exact zeros).
    """
    spec = QuantSpec.parse(spec)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise ValueError(f"quantize_weight needs a 2-D weight [out_features, in_features], got {getattr(w, 'shape', type(w))}")
    if w.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise ValueError(f"quantize_weight needs a floating-point weight, got {w.dtype}")
    if not torch.isfinite(w).all():
        raise ValueError("quantize_weight: the weight contains NaN or Inf")
    n, k = w.shape
    wf = w.detach().to(torch.float32)
    sdt = spec.torch_scale_dtype
    if spec.bits == 8:
        amax = wf.abs().amax(dim=1)
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax)).to(sdt)
        q = torch.round(wf / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
        return QuantizedWeight(spec, q.contiguous(), scale.contiguous(), None, (n, k))

    g = spec.group_size
    ng = spec.ngroups(k)
    kp = ng * g
    real = torch.zeros(n, kp, dtype=torch.bool, device=w.device)
    real[:, :k] = True
    wp = torch.zeros(n, kp, dtype=torch.float32, device=w.device)
    wp[:, :k] = wf
    wg, rg = wp.view(n, ng, g), real.view(n, ng, g)
    inf = torch.tensor(float("inf"), device=w.device)
    if spec.symmetric:
        amax = wg.abs().amax(dim=2)
        scale = torch.where(amax > 0, amax / 7.0, torch.ones_like(amax)).to(sdt)
        zero = torch.full((n, ng), 8, dtype=torch.float32, device=w.device)
    else:
        wmax = torch.where(rg, wg, -inf).amax(dim=2).clamp(min=0)
        wmin = torch.where(rg, wg, inf).amin(dim=2).clamp(max=0)
        rng = wmax - wmin
        scale = torch.where(rng > 0, rng / 15.0, torch.ones_like(rng)).to(sdt)
        zero = torch.round(-wmin / scale.float()).clamp_(0, 15)
    sf = scale.float()[:, :, None]
    codes = torch.round(wg / sf + zero[:, :, None]).clamp_(0, 15)
    codes = torch.where(rg, codes, zero[:, :, None].expand_as(codes)).reshape(n, kp)
    zeros = None if spec.symmetric else zero.to(torch.uint8).contiguous()
    return QuantizedWeight(spec, pack_int4(codes).contiguous(), scale.contiguous(), zeros, (n, k))
