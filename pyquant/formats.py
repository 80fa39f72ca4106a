"""Quantized weight formats: the bottom layer (imports nothing of pyquant).

One canonical format per scheme; every kernel (reference, C++, CUDA, Triton) reads exactly it.

INT8 (``int8``): per-output-channel symmetric.
    qweight int8   [N, K]            w[n, k] ~= qweight[n, k] * scales[n]
    scales  fp32/fp16 [N]            scales[n] = max_k |w[n, k]| / 127
    zeros   None

INT4 (``int4-g{G}`` asymmetric, ``int4-g{G}-sym`` symmetric): group-wise along K, groups of G
consecutive input columns, ``ngroups = ceil(K / G)``; ``K_pad = ngroups * G``.
    qweight uint8  [N, K_pad // 2]   two 4-bit codes per byte, *low nibble first*:
                                     byte[n, j] = code[n, 2j] | (code[n, 2j+1] << 4)
    scales  fp32/fp16 [N, ngroups]
    zeros   uint8  [N, ngroups]      (asymmetric) integer zero-point in [0, 15]
            None                     (symmetric) the zero-point is the constant 8
    w[n, k] ~= (code[n, k] - zero[n, k // G]) * scales[n, k // G]

Activations (``-a8`` suffix, e.g. ``int4-g128-a8``): the weight format is unchanged; every matmul
first quantizes x dynamically to int8, symmetric, per row (token) and per block of K that matches
the weight's scales (the group of G columns for INT4, the whole row for INT8):
    s = max_k |x_k| / 127,  q_k = clamp(round_half_even(x_k / s), -127, 127)  (0 when s is not > 0),
    x_k ~= q_k * s  (a row with a NaN or Inf gives NaN outputs).
``pyquant.ops.reference.quantize_activations`` is the definition; the CPU kernels then multiply
INT4 codes (and, on AVX512-VNNI, INT8 codes) by int8 activations with exact integer
dot products per scale group (llama.cpp's Q4 x Q8 scheme).

Ragged last group: when K is not a multiple of G, the last group's scale and zero-point come
from its real elements only; its padding codes equal the group's zero-point (so they dequantize
to exactly 0), and the true K is kept in ``QuantizedWeight.shape``. Kernels never read x past K.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional

import torch

SUPPORTED_GROUP_SIZES = (32, 64, 128, 256)
_SCALE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
_SPEC_RE = re.compile(r"^int(?P<bits>[48])(?:-g(?P<group>\d+))?(?P<sym>-sym)?(?:-(?P<sd>fp32|fp16))?(?P<a8>-a8)?$")


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """A quantization scheme: the weight format, and whether activations are quantized too.

    bits: 8 or 4. group_size: None for INT8 (per output channel), one of
    SUPPORTED_GROUP_SIZES for INT4. symmetric: INT8 is always symmetric; INT4 is asymmetric
    (integer zero-points) unless ``-sym``. scale_dtype: "fp32" (default) or "fp16".
    act_bits: None (weight-only, the default) or 8 (``-a8``: x quantized per row and block of
    ``act_block(K)`` columns before every matmul; see the top of this file).
    """

    bits: int
    group_size: Optional[int] = None
    symmetric: bool = True
    scale_dtype: str = "fp32"
    act_bits: Optional[int] = None

    def __post_init__(self):
        if self.bits == 8:
            if self.group_size is not None:
                raise ValueError("int8 is per-output-channel: it takes no group size")
            if not self.symmetric:
                raise ValueError("int8 is symmetric only")
        elif self.bits == 4:
            if self.group_size not in SUPPORTED_GROUP_SIZES:
                raise ValueError(
                    f"unsupported int4 group size {self.group_size!r}: use one of {SUPPORTED_GROUP_SIZES}"
                )
        else:
            raise ValueError(f"unsupported bit width {self.bits!r}: use 8 or 4")
        if self.scale_dtype not in _SCALE_DTYPES:
            raise ValueError(f"unsupported scale dtype {self.scale_dtype!r}: use one of {tuple(_SCALE_DTYPES)}")
        if self.act_bits not in (None, 8):
            raise ValueError(f"unsupported activation bits {self.act_bits!r}: use None (weight-only) or 8")

    @classmethod
    def parse(cls, text: "str | QuantSpec") -> "QuantSpec":
        """Parse "int8", "int4-g128", "int4-g32-sym", "int4-g64-fp16", "int4-g128-a8", ... into a QuantSpec."""
        if isinstance(text, QuantSpec):
            return text
        m = _SPEC_RE.match(str(text).strip().lower())
        if not m:
            raise ValueError(
                f"cannot parse quantization spec {text!r}: expected int8[-fp16][-a8] or int4-g<G>[-sym][-fp16][-a8], "
                f"G in {SUPPORTED_GROUP_SIZES}"
            )
        bits = int(m["bits"])
        group = int(m["group"]) if m["group"] else None
        if bits == 4 and group is None:
            raise ValueError(f"int4 needs a group size, e.g. int4-g128 (got {text!r})")
        sym = bool(m["sym"]) or bits == 8
        return cls(bits=bits, group_size=group, symmetric=sym, scale_dtype=m["sd"] or "fp32",
                   act_bits=8 if m["a8"] else None)

    def __str__(self) -> str:
        s = f"int{self.bits}"
        if self.group_size is not None:
            s += f"-g{self.group_size}"
        if self.bits == 4 and self.symmetric:
            s += "-sym"
        if self.scale_dtype != "fp32":
            s += f"-{self.scale_dtype}"
        if self.act_bits is not None:
            s += f"-a{self.act_bits}"
        return s

    def act_block(self, in_features: int) -> int:
        """Columns of x that share one activation scale (``-a8``): the weight's group, or the whole row."""
        return self.group_size or in_features

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return _SCALE_DTYPES[self.scale_dtype]

    @property
    def qmax(self) -> int:
        """Largest code: 127 for int8 (codes in [-127, 127]), 15 for int4 (codes in [0, 15])."""
        return 127 if self.bits == 8 else 15

    def ngroups(self, in_features: int) -> int:
        return 1 if self.group_size is None else -(-in_features // self.group_size)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack integer codes in [0, 15] of shape [N, K] (K even) into uint8 [N, K // 2], low nibble first."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_int4 needs an even last dimension, got {codes.shape[-1]}")
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_int4: uint8 [N, K2] -> uint8 codes [N, 2 * K2]."""
    lo = packed & 0x0F
    hi = packed >> 4
    return torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


@dataclasses.dataclass
class QuantizedWeight:
    """A weight matrix [N, K] (out_features, in_features) in one of the formats above.

    ``nbytes`` counts packed codes + scales + zero-points: what a kernel reads per call.
    """

    spec: QuantSpec
    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: Optional[torch.Tensor]
    shape: tuple

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        self.validate()
        self._runners = {}  # (backend asked for, device) -> prepared kernel runner (pyquant.ops.qmatmul); not part of the value

    def __getstate__(self):  # pickle / deepcopy: the runners hold native handles; rebuilt on demand
        return {k: v for k, v in self.__dict__.items() if k != "_runners"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._runners = {}

    # -- structure ------------------------------------------------------------------------
    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def ngroups(self) -> int:
        return self.spec.ngroups(self.in_features)

    @property
    def padded_in_features(self) -> int:
        g = self.spec.group_size
        return self.in_features if g is None else self.ngroups * g

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    @property
    def nbytes(self) -> int:
        """Bytes of packed codes + scales + zero-points."""
        t = [self.qweight, self.scales] + ([self.zeros] if self.zeros is not None else [])
        return sum(x.numel() * x.element_size() for x in t)

    def validate(self) -> None:
        """Raise ValueError if tensors do not match the spec and shape."""
        n, k = self.shape
        s = self.spec
        if s.bits == 8:
            want_q = ((n, k), torch.int8)
            want_s = (n,)
        else:
            want_q = ((n, self.padded_in_features // 2), torch.uint8)
            want_s = (n, self.ngroups)
        if tuple(self.qweight.shape) != want_q[0] or self.qweight.dtype != want_q[1]:
            raise ValueError(
                f"{s}: qweight must be {want_q[1]} {list(want_q[0])}, got {self.qweight.dtype} {list(self.qweight.shape)}"
            )
        if tuple(self.scales.shape) != want_s or self.scales.dtype != s.torch_scale_dtype:
            raise ValueError(
                f"{s}: scales must be {s.torch_scale_dtype} {list(want_s)}, got {self.scales.dtype} {list(self.scales.shape)}"
            )
        needs_zeros = s.bits == 4 and not s.symmetric
        if needs_zeros:
            if self.zeros is None or tuple(self.zeros.shape) != want_s or self.zeros.dtype != torch.uint8:
                got = None if self.zeros is None else (self.zeros.dtype, list(self.zeros.shape))
                raise ValueError(f"{s}: zeros must be uint8 {list(want_s)}, got {got}")
        elif self.zeros is not None:
            raise ValueError(f"{s}: a symmetric format has no zeros tensor")
        devs = {t.device for t in (self.qweight, self.scales, self.zeros) if t is not None}
        if len(devs) != 1:
            raise ValueError(f"QuantizedWeight tensors are on different devices: {devs}")

    # -- conversions ----------------------------------------------------------------------
    def codes(self) -> torch.Tensor:
        """Integer codes [N, K] as int32 (int8 codes signed; int4 codes in [0, 15])."""
        if self.spec.bits == 8:
            return self.qweight.to(torch.int32)
        return unpack_int4(self.qweight)[:, : self.in_features].to(torch.int32)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The full-precision weight [N, K] this format represents (computed in float64, returned as dtype)."""
        q = self.codes().to(torch.float64)
        s = self.scales.to(torch.float64)
        if self.spec.bits == 8:
            return (q * s[:, None]).to(dtype)
        g = self.spec.group_size
        k = self.in_features
        z = 8.0 if self.zeros is None else self.zeros.to(torch.float64).repeat_interleave(g, dim=1)[:, :k]
        s = s.repeat_interleave(g, dim=1)[:, :k]
        return ((q - z) * s).to(dtype)

    def to(self, device) -> "QuantizedWeight":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return QuantizedWeight(self.spec, mv(self.qweight), mv(self.scales), mv(self.zeros), self.shape)

    def rows(self, start: int, stop: int) -> "QuantizedWeight":
        """Output rows [start, stop) as a QuantizedWeight sharing storage (formats are row-major in N)."""
        z = None if self.zeros is None else self.zeros[start:stop]
        return QuantizedWeight(self.spec, self.qweight[start:stop], self.scales[start:stop], z,
                               (stop - start, self.in_features))

    def tensors(self) -> dict:
        """The tensors to save (names stable across versions)."""
        d = {"qweight": self.qweight, "scales": self.scales}
        if self.zeros is not None:
            d["zeros"] = self.zeros
        return d

    @classmethod
    def from_tensors(cls, spec: "QuantSpec | str", shape, tensors: dict) -> "QuantizedWeight":
        return cls(QuantSpec.parse(spec), tensors["qweight"], tensors["scales"], tensors.get("zeros"), tuple(shape))
