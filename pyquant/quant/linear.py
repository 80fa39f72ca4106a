"""``QuantLinear``: a drop-in ``nn.Linear`` whose weight is a QuantizedWeight, run by ``pq.ops.qmatmul``.

The packed tensors (``qweight``, ``scales``, ``zeros``) are registered as buffers, so ``.to()``,
``state_dict()`` and ``load_state_dict()`` work as for any module; ``scales`` keep the spec's dtype
even when the model is cast (``model.to(torch.bfloat16)`` changes activations, not the format).

Which qmatmul backend runs: a module's own ``backend`` attribute if set (``set_backend(model, name)``),
else the innermost ``with use_backend(name):`` block on the calling thread, else "auto" (fastest
available). ``torch.compile(model, fullgraph=True)`` traces QuantLinear without a graph break.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Optional

import torch
from torch import nn

from .. import nvtx
from ..formats import QuantizedWeight, QuantSpec
from ..ops import qmatmul
from .rtn import quantize_weight

# .backend: the innermost use_backend() block's name on this thread. A thread-local, not a
# ContextVar: torch.compile traces a thread-local's attribute (guarding on its value, so a new
# block recompiles) but breaks the graph at ContextVar.get.
_STATE = threading.local()


@contextlib.contextmanager
def use_backend(name: str):
    """Within the block, on this thread, QuantLinear modules without their own ``backend`` run qmatmul
    on ``name`` ("auto", "reference", "cpu", ...; see ``pq.ops.available_backends("qmatmul")``). A
    torch.compile'd model follows it too (it recompiles for a new name)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"use_backend: backend must be a non-empty string, got {name!r}")
    outer = getattr(_STATE, "backend", "auto")
    _STATE.backend = name
    try:
        yield
    finally:
        _STATE.backend = outer


def set_backend(model: nn.Module, name: Optional[str]) -> int:
    """Pin every QuantLinear in ``model`` to backend ``name`` (None: follow use_backend / "auto").
    Returns the number of modules changed."""
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"set_backend: backend must be a non-empty string or None, got {name!r}")
    n = 0
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.backend = name
            n += 1
    return n


def unpermute_columns(t: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """t [N, K] whose column p is input column perm[p] (the layout ``in_perm`` describes), put back
    in input order: result[:, perm[p]] = t[:, p]."""
    return torch.empty_like(t).index_copy_(1, perm.to(t.device).long(), t)


def _linear_weight(module: nn.Module) -> torch.Tensor:
    """The [out_features, in_features] weight of an nn.Linear or a transformers Conv1D (stored [in, out])."""
    if isinstance(module, nn.Linear):
        return module.weight
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # GPT-2 style
        return module.weight.t()
    raise ValueError(f"cannot quantize a {type(module).__name__}: expected nn.Linear or transformers Conv1D")


class QuantLinear(nn.Module):
    """y = x @ W.T + b with W stored in a quantized format (pyquant.formats); forward = ``pq.ops.qmatmul``.

    Build one with ``QuantLinear.from_linear(linear, "int4-g128")`` or ``QuantLinear.from_quantized(qw, bias)``;
    ``QuantLinear(in_features, out_features, spec, bias=...)`` makes an empty shell to load a state dict into.
    Input ``x[..., in_features]`` (fp32/bf16/fp16) -> output ``[..., out_features]`` in x's dtype.
    ``in_perm`` (int32 [in_features], optional): the stored weight's columns are the layer's input
    columns in this order, and x is gathered the same way first (GPTQ checkpoints quantized with
    act-order, pyquant/quant/checkpoints.py).
    """

    def __init__(self, in_features: int, out_features: int, spec: "QuantSpec | str", bias: bool = True,
                 device=None, bias_dtype: torch.dtype = torch.float32, in_perm: bool = False):
        super().__init__()
        spec = QuantSpec.parse(spec)
        if int(in_features) <= 0 or int(out_features) <= 0:
            raise ValueError(f"QuantLinear: features must be positive, got in={in_features} out={out_features}")
        self.in_features, self.out_features, self.spec = int(in_features), int(out_features), spec
        n, k = self.out_features, self.in_features
        if spec.bits == 8:
            q = torch.zeros(n, k, dtype=torch.int8, device=device)
            s = torch.ones(n, dtype=spec.torch_scale_dtype, device=device)
        else:
            ng = spec.ngroups(k)
            q = torch.zeros(n, ng * spec.group_size // 2, dtype=torch.uint8, device=device)
            s = torch.ones(n, ng, dtype=spec.torch_scale_dtype, device=device)
        z = None if spec.symmetric else torch.zeros(s.shape, dtype=torch.uint8, device=device)
        self.register_buffer("qweight", q)
        self.register_buffer("scales", s)
        self.register_buffer("zeros", z)
        self.register_buffer("in_perm", torch.arange(k, dtype=torch.int32, device=device) if in_perm else None)
        self.bias = nn.Parameter(torch.zeros(n, dtype=bias_dtype, device=device), requires_grad=False) if bias else None
        self.backend: Optional[str] = None

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: Optional[torch.Tensor] = None,
                       in_perm: Optional[torch.Tensor] = None) -> "QuantLinear":
        """A QuantLinear holding ``qw`` (tensors shared, not copied), an optional bias [out_features]
        and an optional input permutation (class docstring)."""
        if not isinstance(qw, QuantizedWeight):
            raise ValueError(f"from_quantized needs a QuantizedWeight, got {type(qw).__name__}")
        if bias is not None and tuple(bias.shape) != (qw.out_features,):
            raise ValueError(f"bias must have shape [{qw.out_features}], got {list(bias.shape)}")
        m = cls(qw.in_features, qw.out_features, qw.spec, bias=False, device="meta")
        m.qweight, m.scales, m.zeros = qw.qweight, qw.scales, qw.zeros
        if in_perm is not None:
            in_perm = in_perm.to(torch.int32).reshape(-1)
            if in_perm.numel() != qw.in_features or not torch.equal(in_perm.sort().values.long(),
                                                                    torch.arange(qw.in_features)):
                raise ValueError(f"in_perm must be a permutation of {qw.in_features} input columns")
            m.in_perm = in_perm.to(qw.qweight.device)
        if bias is not None:
            m.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        return m

    @classmethod
    def from_linear(cls, linear: nn.Module, spec: "QuantSpec | str") -> "QuantLinear":
        """Quantize an ``nn.Linear`` (or transformers ``Conv1D``) with round-to-nearest into ``spec``."""
        w = _linear_weight(linear)
        qw = quantize_weight(w.detach(), spec)
        b = getattr(linear, "bias", None)
        return cls.from_quantized(qw, None if b is None else b.detach())

    @property
    def qw(self) -> QuantizedWeight:
        """The weight as a QuantizedWeight over this module's current buffers (no copy).

        Kept between calls while the buffers stay the same tensors: building and validating one
        costs tens of microseconds, as much as a decode-size kernel (``.to()`` or assigning a
        buffer makes a new one)."""
        b = self._buffers
        q, s, z = b["qweight"], b["scales"], b["zeros"]
        qw = self.__dict__.get("_qw")
        if qw is None or qw.qweight is not q or qw.scales is not s or qw.zeros is not z:
            qw = QuantizedWeight(self.spec, q, s, z, (self.out_features, self.in_features))
            self.__dict__["_qw"] = qw
        return qw

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The full-precision weight [out_features, in_features] in the layer's own input order
        (``in_perm`` undone): what ``x @ W.T`` multiplies."""
        w = self.qw.dequantize(dtype)
        perm = self._buffers["in_perm"]
        return w if perm is None else unpermute_columns(w, perm)

    @property
    def weight_nbytes(self) -> int:
        """Bytes of packed weight + scales + zero-points (bias not included)."""
        return self.qw.nbytes

    @property
    def backend_name(self) -> str:
        """The backend its matmuls ask for: its own ``backend``, else the thread's ``use_backend``, else "auto"."""
        return self.backend or getattr(_STATE, "backend", "auto")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y[..., out_features] = x[..., in_features] @ W.T (+ bias), in x's dtype, via pq.ops.qmatmul."""
        backend = self.backend_name
        if self._buffers["in_perm"] is not None:
            x = x.index_select(-1, self._buffers["in_perm"])
        if nvtx.enabled():
            m = x.numel() // max(x.shape[-1], 1)
            with nvtx.range(f"pyquant/qmatmul {self.spec} M={m} N={self.out_features} K={self.in_features}"):
                return qmatmul(x, self.qw, self.bias, backend=backend)
        return qmatmul(x, self.qw, self.bias, backend=backend)

    def __getattr__(self, name: str):
        if name == "weight":  # say why, for model code that reads a layer's weight directly
            raise AttributeError("QuantLinear has no .weight: its weight is packed (.qw; .qw.dequantize() gives a "
                                 "full-precision copy). Model code that reads a layer's .weight itself (HunYuan-MoE's "
                                 "router does) needs that layer kept in full precision (quantize_model's skip).")
        return super().__getattr__(name)

    def _apply(self, fn, recurse=True):
        # Casting the model (e.g. .to(torch.bfloat16)) must not change the format's scale dtype.
        scales = self.scales
        super()._apply(fn, recurse)
        if self.scales.dtype != scales.dtype:
            self.scales = scales.to(self.scales.device)
        return self

    def extra_repr(self) -> str:
        b = self.backend or "auto"
        perm = ", in_perm=True" if self._buffers["in_perm"] is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, " \
               f"spec={self.spec}, backend={b}{perm}"
