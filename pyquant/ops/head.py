"""An LM head as the streamed ops see it: ``logits = softcap(hidden @ weight.T + bias)``.

Most heads are a bare weight (a Tensor [V, H] or a QuantizedWeight), and the ops take one as is.
Some models post-process the product: Phi-1/2, GPT-J and CodeGen add a bias [V]; Gemma 2 soft-caps
the result, ``cap * tanh(z / cap)`` (its ``final_logit_softcapping``). ``LMHead`` carries those
steps, so every backend produces the model's own logits tile by tile (still never [T, V]).
``finish_`` is the one place the steps are written for PyTorch tiles (the reference and the tile
driver); the fused Triton kernel applies the same two steps in registers.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch


@dataclasses.dataclass(frozen=True)
class LMHead:
    """weight [V, H] (Tensor or QuantizedWeight), bias [V] or None, softcap (a positive float) or None."""

    weight: object
    bias: Optional[torch.Tensor] = None
    softcap: Optional[float] = None

    @property
    def shape(self) -> "tuple[int, int]":
        return tuple(self.weight.shape)

    @property
    def device(self) -> torch.device:
        return self.weight.device

    @property
    def plain(self) -> bool:
        """True when the logits are hidden @ weight.T with nothing after."""
        return self.bias is None and self.softcap is None

    def finish_(self, logits: torch.Tensor, v0: int = 0, v1: Optional[int] = None) -> torch.Tensor:
        """Apply the bias (its columns v0..v1) and the soft cap to the raw product tile, in place."""
        if self.bias is not None:
            logits.add_(self.bias[v0:v1 if v1 is not None else v0 + logits.shape[-1]])
        if self.softcap is not None:  # cap * tanh(z / cap) = 2 cap * sigmoid(2 z / cap) - cap: on torch's
            c = self.softcap           # CPU 4x faster than with tanh_ (bench/RESULTS.md), within 8e-6 at cap 30
            logits.mul_(2.0 / c).sigmoid_().mul_(2.0 * c).sub_(c)
        return logits


def as_head(weight) -> LMHead:
    """``weight`` as an LMHead (a bare weight gets no bias and no cap)."""
    return weight if isinstance(weight, LMHead) else LMHead(weight)


def bare_weight(weight):
    """The weight of an LMHead, or ``weight`` itself."""
    return weight.weight if isinstance(weight, LMHead) else weight


def check_head_extras(head: LMHead, v: int, device, what: str) -> None:
    """ValueError naming the problem unless the bias is a floating [V] tensor on ``device`` and the
    soft cap a finite positive number."""
    b = head.bias
    if b is not None:
        if not isinstance(b, torch.Tensor) or not b.is_floating_point() or tuple(b.shape) != (v,):
            raise ValueError(f"{what}: the head's bias must be a floating-point tensor of shape [{v}], got "
                             f"{getattr(b, 'dtype', type(b).__name__)} {list(getattr(b, 'shape', []))}")
        if b.device != device:
            raise ValueError(f"{what}: the head's bias is on {b.device} but its weight is on {device}")
    c = head.softcap
    if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0):
        raise ValueError(f"{what}: the head's softcap must be a finite number > 0, got {c!r}")
