"""Checkpoints quantized by other tools, in the GPTQ format (AutoGPTQ, GPTQModel, optimum;
``quantization_config.quant_method`` "gptq" in config.json), AutoAWQ's GEMM format ("awq") or
llm-compressor's compressed-tensors integer formats ("compressed-tensors"), loaded into pyquant's
formats so that pyquant's kernels run them: a model quantized by another tool is measured for
quality and cost like one of pyquant's own.

The GPTQ format, per linear layer ``<name>`` (K in, N out, b bits, groups of G along K):
    qweight int32 [K * b / 32, N]   code of (k, n): bits b*(k % (32/b)) .. of qweight[k // (32/b), n]
    qzeros  int32 [ng, N * b / 32]  zero-point of (g, n): bits b*(n % (32/b)) .. of qzeros[g, n // (32/b)]
    scales  fp16  [ng, N]
    g_idx   int32 [K]               the group of input column k (k // G unless act-order, "desc_act")
    bias    [N] (optional)
    w[n, k] = scales[g, n] * (code[k, n] - zero[g, n]), g = g_idx[k]
``checkpoint_format`` "gptq" (v1, the default) stores zero - 1 (clamped at 0) and every reader adds
the 1 back; "gptq_v2" stores the zero itself.

Mapping onto pyquant (exact: the same weights, fp16 scales kept as fp16):
- 4 bits -> ``int4-g{G'}-fp16`` (``-sym`` when every zero-point is 8), G' the largest supported group
  size dividing G (128 for per-channel ``group_size`` -1): a GPTQ group's scale and zero repeat over
  its G / G' pyquant groups.
- 8 bits, one group per row and zero-point 128 everywhere (symmetric, per channel) -> ``int8-fp16``.
- act-order (g_idx not k // G): the input columns are sorted by group (stable), which makes every
  group contiguous, and the QuantLinear permutes x the same way (``in_perm``) before its matmul.
- mixture-of-experts layers stored one per expert ("<experts>.<e>.gate_proj / up_proj / down_proj",
  Mixtral's "w1 / w3 / w2") become the QuantExpertStacks of transformers' fused experts (gate and
  up stacked into gate_up_proj, _load_experts).
Anything else (2/3 bits, 8-bit groups, zero-points past 15, transposed or interleaved experts) is
refused with the reason.

AWQ's GEMM format (``version`` "gemm", ``zero_point`` true, 4 bits), per layer:
    qweight int32 [K, N / 8]        word c of row k holds the codes of columns 8c + AWQ_ORDER[i] at
                                    bits 4i .. 4i+3 (i = 0 .. 7)
    qzeros  int32 [ng, N / 8]       the zero-points, packed the same way (stored as they are)
    scales  fp16  [ng, N]           groups of G consecutive input columns
and maps onto ``int4-g{G'}-fp16`` as above (no act-order).

compressed-tensors (llm-compressor; ``format`` "pack-quantized", or "int-quantized" for int8),
per layer: ``weight_packed`` int32 [N, K * b / 32] (packed along K, value i of a word at bits
b*i, each stored as q + 2^(b-1) for the signed code q), or ``weight`` int8 [N, K];
``weight_scale`` [N, ng]; ``weight_zero_point`` (asymmetric: signed, packed the same way along N,
or int8 [N, ng] in older files); ``weight_g_idx`` [K] (act-order); w = (q - zp) * scale. Bits,
groups and symmetry are read from the tensors themselves. Quantized activations are reproduced
only for int8 weights with int8 dynamic per-token activations (W8A8): pyquant's ``int8-a8``
quantizes each token by max|x| / 127 as vLLM's kernels do.
"""
from __future__ import annotations

import json
import os
import re
from typing import Optional

import torch
from torch import nn

from ..formats import SUPPORTED_GROUP_SIZES, QuantizedWeight, QuantSpec
from .io import cast_floating, weight_files
from .linear import QuantLinear, _linear_weight
from .rtn import pack_codes

_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of an AWQ word holds column AWQ_ORDER[i] of its 8
FORMATS = ("gptq", "awq", "compressed-tensors")
_CT_FORMATS = ("pack-quantized", "int-quantized", "naive-quantized")  # compressed-tensors' integer formats


def checkpoint_config(path: str) -> "dict | None":
    """The ``quantization_config`` of an HF directory's config.json when its ``quant_method`` is one
    of FORMATS (a checkpoint this module reads), else None."""
    try:
        with open(os.path.join(path, "config.json")) as fh:
            qc = json.load(fh).get("quantization_config")
    except (OSError, ValueError):
        return None
    return qc if isinstance(qc, dict) and str(qc.get("quant_method", "")).lower() in FORMATS else None


def _unpack(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """int32 words holding 32/bits codes each, lowest bits first, unpacked along ``dim`` (uint8 codes:
    a layer's transient is 5 bytes a code, not the 24 of int64 steps)."""
    per = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    # an arithmetic shift of a negative word fills with ones above bit 31 - bits, which the mask drops
    codes = ((packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).to(torch.uint8)  # [..., per] on a new axis
    if dim == 0:  # [R, C, per] -> [R * per, C]
        return codes.permute(0, 2, 1).reshape(packed.shape[0] * per, packed.shape[1])
    return codes.reshape(packed.shape[0], packed.shape[1] * per)


def pack_words(codes: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Inverse of _unpack: integer codes in [0, 2^bits) packed 32/bits to an int32 word along ``dim``,
    value i of a word at bits [bits*i, bits*(i+1)) (the dimension padded with zeros to whole words)."""
    per = 32 // bits
    v = codes.to(torch.int64)
    if dim == 0:
        v = v.T
    rows, cols = v.shape
    v = torch.nn.functional.pad(v, (0, -cols % per)).reshape(rows, -1, per)
    words = (v << torch.arange(0, 32, bits, dtype=torch.int64)).sum(-1)  # disjoint bits: the sum is an OR
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # the bit pattern as int32
    return words.T.contiguous() if dim == 0 else words


def _pyquant_group(group: int, in_features: int) -> int:
    g = in_features if group in (-1, 0) or group >= in_features else group
    if g == in_features and 128 in SUPPORTED_GROUP_SIZES:
        return 128
    fits = [s for s in SUPPORTED_GROUP_SIZES if g % s == 0]
    if not fits:
        raise ValueError(f"group size {group} is not a multiple of a pyquant group size "
                         f"{SUPPORTED_GROUP_SIZES}")
    return max(fits)


def convert_gptq_layer(tensors: dict, bits: int, group_size: int, in_features: int, out_features: int,
                       v2: bool = False, who: str = "layer") -> "tuple[QuantizedWeight, Optional[torch.Tensor]]":
    """One GPTQ layer's tensors {"qweight", "qzeros", "scales", ["g_idx"]} -> (QuantizedWeight, in_perm),
    in_perm None unless act-order reordered the input columns (see the module docstring)."""
    if bits not in (4, 8):
        raise ValueError(f"{who}: {bits}-bit GPTQ weights have no pyquant format (4 and 8 bits do)")
    k, n = int(in_features), int(out_features)
    qweight, qzeros, scales = tensors["qweight"], tensors["qzeros"], tensors["scales"]
    per = 32 // bits
    _check_packed(who, qweight, (-(-k // per), n), k, n, bits)
    ng = scales.shape[0]
    if scales.dim() != 2 or scales.shape[1] != n or tuple(qzeros.shape) != (ng, -(-n // per)):
        raise ValueError(f"{who}: scales {list(scales.shape)} and qzeros {list(qzeros.shape)} do not fit "
                         f"{n} outputs at {bits} bits")
    codes = _unpack(qweight, bits, 0)[:k].T  # [N, K]
    zeros = _unpack(qzeros, bits, 1)[:, :n] + (0 if v2 else 1)  # [ng, N]
    g_idx = tensors.get("g_idx")
    g_idx = (torch.arange(k) // (k if group_size in (-1, 0) else group_size) if g_idx is None
             else g_idx.to(torch.int64).reshape(-1))
    return _to_pyquant(codes, zeros, scales, g_idx, bits, group_size, who)


def convert_awq_layer(tensors: dict, group_size: int, in_features: int, out_features: int,
                      who: str = "layer") -> QuantizedWeight:
    """One AWQ (GEMM) layer's tensors {"qweight", "qzeros", "scales"} -> QuantizedWeight (module docstring)."""
    k, n = int(in_features), int(out_features)
    qweight, qzeros, scales = tensors["qweight"], tensors["qzeros"], tensors["scales"]
    _check_packed(who, qweight, (k, n // 8), k, n, 4)
    gs = k if group_size in (-1, 0) else group_size
    ng = -(-k // gs)
    if n % 8 or tuple(scales.shape) != (ng, n) or tuple(qzeros.shape) != (ng, n // 8):
        raise ValueError(f"{who}: scales {list(scales.shape)} and qzeros {list(qzeros.shape)} do not fit "
                         f"{k} x {n} in groups of {gs}")
    order = torch.tensor(AWQ_ORDER)
    inverse = torch.argsort(order)  # column j of 8 sits in nibble inverse[j]
    cols = (torch.arange(n) // 8) * 8 + inverse[torch.arange(n) % 8]
    codes = _unpack(qweight, 4, 1)[:, cols].T  # [N, K]
    zeros = _unpack(qzeros, 4, 1)[:, cols]  # [ng, N]
    qw, _ = _to_pyquant(codes, zeros, scales, torch.arange(k) // gs, 4, group_size, who)
    return qw


def _check_packed(who, qweight, shape, k, n, bits) -> None:
    if qweight.dtype != torch.int32 or tuple(qweight.shape) != tuple(shape):
        raise ValueError(f"{who}: qweight is {qweight.dtype} {list(qweight.shape)}, expected int32 "
                         f"{list(shape)} for {k} inputs and {n} outputs at {bits} bits")


def _to_pyquant(codes, zeros, scales, g_idx, bits, group_size, who):
    """Integer codes [N, K], zero-points [ng, N], scales [ng, N] and each input column's group
    g_idx [K] -> (QuantizedWeight, in_perm or None)."""
    n, k = codes.shape
    ng = scales.shape[0]
    if g_idx.numel() != k or int(g_idx.min()) < 0 or int(g_idx.max()) >= ng:
        raise ValueError(f"{who}: g_idx does not map {k} input columns onto {ng} groups")
    perm = torch.argsort(g_idx, stable=True)
    reorder = not torch.equal(perm, torch.arange(k))
    if reorder:
        codes, g_idx = codes[:, perm], g_idx[perm]
    scales = scales.float() if scales.dtype == torch.bfloat16 else scales
    scale_dtype = "fp16" if scales.dtype == torch.float16 else "fp32"
    in_perm = perm.to(torch.int32) if reorder else None
    if bits == 8:
        if ng != 1 or not bool((zeros == 128).all()):
            raise ValueError(f"{who}: 8-bit GPTQ weights map onto pyquant's int8 only when symmetric with one "
                             f"group per row (zero-point 128); this one has {ng} group(s)")
        spec = QuantSpec.parse(f"int8-{scale_dtype}")
        q = (codes.to(torch.int16) - 128).to(torch.int8).contiguous()
        return QuantizedWeight(spec, q, scales[0].to(spec.torch_scale_dtype).contiguous(), None, (n, k)), in_perm
    if int(zeros.max()) > 15:
        raise ValueError(f"{who}: a zero-point of {int(zeros.max())} is outside pyquant's INT4 range [0, 15]")
    g = _pyquant_group(group_size, k)
    pg = -(-k // g)  # pyquant groups
    starts = g_idx[torch.arange(pg) * g]  # the source group of each pyquant group's first column
    if not torch.equal(g_idx, starts[torch.arange(k) // g]):
        raise ValueError(f"{who}: its groups do not fall on pyquant groups of {g} columns "
                         f"(group_size {group_size}{', act-order' if reorder else ''})")
    sym = bool((zeros == 8).all())
    spec = QuantSpec.parse(f"int4-g{g}{'-sym' if sym else ''}-{scale_dtype}")
    s = scales.T[:, starts].to(spec.torch_scale_dtype)  # [N, pg]
    z = zeros.T[:, starts].float()
    padded = torch.empty(n, pg * g, dtype=torch.uint8)
    padded[:, :k] = codes
    padded[:, k:] = z[:, -1:]  # the ragged last group's padding dequantizes to 0
    return pack_codes(spec, padded, s, z, (n, k)), in_perm


def _read_checkpoint(path: str) -> dict:
    """Every tensor of the directory's safetensors files (io.weight_files: the index's shards when
    there is an index; load_file maps the files: the packed tensors stay file-backed pages, not a
    second copy in memory)."""
    from safetensors.torch import load_file

    files = weight_files(path)
    if not files:
        raise ValueError(f"{path}: no .safetensors files (checkpoints in .bin files are not read)")
    tensors = {}
    for f in files:
        tensors.update(load_file(f))
    return tensors


def convert_compressed_layer(tensors: dict, in_features: int, out_features: int,
                             who: str = "layer") -> "tuple[QuantizedWeight, Optional[torch.Tensor]]":
    """One compressed-tensors layer's tensors {"weight_packed" or "weight", "weight_scale",
    ["weight_zero_point"], ["weight_g_idx"]} -> (QuantizedWeight, in_perm) (module docstring)."""
    k, n = int(in_features), int(out_features)
    shape = tensors.get("weight_shape")
    if shape is not None and [int(v) for v in shape.reshape(-1)] != [n, k]:
        raise ValueError(f"{who}: weight_shape {shape.tolist()} is not the layer's [{n}, {k}]")
    scale = tensors["weight_scale"]
    if scale.dim() == 1:
        scale = scale[:, None]
    ng = scale.shape[1]
    if scale.dim() != 2 or scale.shape[0] != n:
        raise ValueError(f"{who}: weight_scale is {list(scale.shape)}, expected [{n}, groups]")
    if "weight_packed" in tensors:
        packed = tensors["weight_packed"]
        words = packed.shape[-1] if packed.dim() == 2 else -1
        bits = next((b for b in (4, 8) if words == -(-k * b // 32)), None)
        if packed.dtype != torch.int32 or packed.shape[0] != n or bits is None:
            raise ValueError(f"{who}: weight_packed is {packed.dtype} {list(packed.shape)}, not int32 "
                             f"[{n}, K / 8 or K / 4] for {k} inputs")
        unsigned = _unpack(packed, bits, 1)[:, :k]
    else:
        q = tensors["weight"]
        if q.dtype != torch.int8 or tuple(q.shape) != (n, k):
            raise ValueError(f"{who}: weight is {q.dtype} {list(q.shape)}, expected int8 [{n}, {k}]")
        bits, unsigned = 8, (q.to(torch.int16) + 128).to(torch.uint8)
    offset = 1 << (bits - 1)
    zp = tensors.get("weight_zero_point")
    if zp is None:
        zeros = torch.full((ng, n), offset)
    elif zp.dtype == torch.int32 and tuple(zp.shape) == (-(-n * bits // 32), ng):
        zeros = _unpack(zp, bits, 0)[:n].T  # stored as zp + offset
    elif tuple(zp.shape) in ((n, ng), (n,)):
        zeros = zp.reshape(n, ng).to(torch.int64).T + offset
    else:
        raise ValueError(f"{who}: weight_zero_point is {zp.dtype} {list(zp.shape)}, which fits neither "
                         f"[{n}, {ng}] nor its packed form")
    group = -1 if ng == 1 else -(-k // ng)
    g_idx = tensors.get("weight_g_idx")
    g_idx = torch.arange(k) // (k if ng == 1 else group) if g_idx is None else g_idx.to(torch.int64).reshape(-1)
    return _to_pyquant(unsigned, zeros, scale.T, g_idx, bits, group, who)


class _Reader:
    """One checkpoint format: which layers it quantized and how to convert each."""

    def __init__(self, path: str, qc: dict):
        self.kind = str(qc["quant_method"]).lower()
        self.path, self.qc, self.a8 = path, qc, set()  # a8: the config groups that quantize activations
        if self.kind == "compressed-tensors":
            self._check_compressed()
            self.marker, self.suffixes, self.required = (
                "weight_scale", ("weight_packed", "weight", "weight_scale", "weight_zero_point", "weight_g_idx",
                                 "weight_shape"), ("weight_scale",))
            return
        self.bits = int(qc.get("bits", qc.get("w_bit", 4)))
        self.group = int(qc.get("group_size", qc.get("q_group_size", 128)))
        self.v2 = str(qc.get("checkpoint_format") or qc.get("format") or "gptq").lower() == "gptq_v2"
        self.marker, self.suffixes, self.required = "qweight", _SUFFIXES, _SUFFIXES[:3]
        if self.kind == "awq":
            version = str(qc.get("version", "gemm")).lower()
            if version != "gemm" or not qc.get("zero_point", True) or self.bits != 4:
                raise ValueError(f"{path}: AWQ version {version!r}, zero_point {qc.get('zero_point', True)}, "
                                 f"{self.bits} bits: pyquant reads AWQ's GEMM format (4 bits with zero-points)")

    def _check_compressed(self) -> None:
        fmt = str(self.qc.get("format", "")).lower()
        groups = self.qc.get("config_groups") or {}
        # "mixed-precision": each config group names its own format
        formats = {str(g.get("format", "")).lower() for g in groups.values()} if fmt == "mixed-precision" else {fmt}
        if not formats <= set(_CT_FORMATS):
            raise ValueError(f"{self.path}: compressed-tensors format {'/'.join(sorted(formats))!r}: pyquant reads the "
                             f"integer formats {list(_CT_FORMATS)}")
        for name, group in groups.items():
            w, a = group.get("weights") or {}, group.get("input_activations")
            if w and (w.get("type", "int") != "int" or int(w.get("num_bits", 4)) not in (4, 8)):
                raise ValueError(f"{self.path}: config group {name!r} has {w.get('num_bits')}-bit {w.get('type')} "
                                 "weights; pyquant reads 4- and 8-bit integer weights")
            if a:
                token_int8 = (a.get("type", "int") == "int" and int(a.get("num_bits", 0)) == 8 and a.get("dynamic")
                              and a.get("symmetric", True) and a.get("strategy") == "token")
                if not token_int8 or int(w.get("num_bits", 0)) != 8:
                    raise ValueError(f"{self.path}: config group {name!r} quantizes activations as {a}; pyquant "
                                     "reproduces only int8 dynamic per-token activations on int8 weights (W8A8)")
                self.a8.add(name)

    def _group_of(self, layer: str) -> "str | None":
        """The compressed-tensors config group whose targets match ``layer`` best, as vLLM picks it: its
        exact name, then a "re:" regex (re.match), then a class name such as "Linear" (every layer
        here is a linear one; module names are lower case)."""
        def rank(target: str) -> int:
            if target == layer:
                return 3
            if target.startswith("re:"):
                return 2 if re.match(target[3:], layer) else 0
            return 1 if target[:1].isupper() and "." not in target else 0

        ranked = [(max((rank(t) for t in g.get("targets") or []), default=0), name)
                  for name, g in (self.qc.get("config_groups") or {}).items()]
        best = max(ranked, default=(0, None))
        return best[1] if best[0] else None

    def layer_names(self, tensors: dict) -> list:
        return sorted({n[: -len(self.marker) - 1] for n in tensors if n.endswith("." + self.marker)})

    def convert(self, name: str, parts: dict, k: int, n: int):
        who = f"{self.path}: {name}"
        if self.kind == "compressed-tensors":
            qw, perm = convert_compressed_layer(parts, k, n, who=who)
            if self._group_of(name) in self.a8:
                qw = QuantizedWeight(QuantSpec.parse(f"{qw.spec}-a8"), qw.qweight, qw.scales, qw.zeros, qw.shape)
            return qw, perm
        if self.kind == "awq":
            return convert_awq_layer(parts, self.group, k, n, who=who), None
        return convert_gptq_layer(parts, self.bits, self.group, k, n, v2=self.v2, who=who)

    def source(self) -> dict:
        if self.kind == "compressed-tensors":
            return {"quant_method": self.kind, "format": self.qc.get("format"),
                    "activations": "int8" if self.a8 else None}
        out = {"quant_method": self.kind, "bits": self.bits, "group_size": self.group}
        if self.kind == "gptq":
            out.update(desc_act=bool(self.qc.get("desc_act", False)), sym=self.qc.get("sym"),
                       checkpoint_format="gptq_v2" if self.v2 else "gptq")
        return out


# Per-expert layers in the checkpoints of models whose experts transformers fuses into 3-D
# parameters (its conversion_mapping.py): "<experts>.<e>.gate_proj / up_proj / down_proj" (Qwen2/3-MoE,
# OLMoE, DeepSeek, GLM-4-MoE, ...) or "<experts>.<e>.w1 / w3 / w2" (Mixtral, MiniMax), gate and up
# concatenated into gate_up_proj in that order; Mixtral's checkpoints name "block_sparse_moe" what
# the model calls "mlp".
_EXPERT_NAMES = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"))
_PREFIX_RENAMES = ((".block_sparse_moe.", ".mlp."),)  # (checkpoint, model)


def _as_asymmetric(qw: QuantizedWeight) -> QuantizedWeight:
    """A symmetric INT4 weight in the asymmetric format (zero-points of 8): the same values."""
    if qw.spec.bits != 4 or not qw.spec.symmetric:
        return qw
    spec = QuantSpec.parse(str(qw.spec).replace("-sym", ""))
    zeros = torch.full(qw.scales.shape, 8, dtype=torch.uint8)
    return QuantizedWeight(spec, qw.qweight, qw.scales, zeros, qw.shape)


def _common_spec(qws: list, who: str) -> list:
    """The weights in one spec (symmetric ones made asymmetric when the others are), or ValueError."""
    if len({str(q.spec) for q in qws}) > 1:
        qws = [_as_asymmetric(q) for q in qws]
    if len({str(q.spec) for q in qws}) > 1:
        raise ValueError(f"{who}: its experts come in different formats {sorted({str(q.spec) for q in qws})}")
    return qws


def _stack_rows(a: QuantizedWeight, b: QuantizedWeight) -> QuantizedWeight:
    """[a; b]: two weights of one spec and in_features as one of a.out + b.out rows."""
    zeros = None if a.zeros is None else torch.cat([a.zeros, b.zeros])
    return QuantizedWeight(a.spec, torch.cat([a.qweight, b.qweight]), torch.cat([a.scales, b.scales]), zeros,
                           (a.out_features + b.out_features, a.in_features))


def _load_experts(model: nn.Module, names: set, convert, layers: dict, who: str) -> set:
    """Install the per-expert checkpoint layers among ``names`` as the QuantExpertStacks of the
    model's fused experts modules; ``convert(name, k, n)`` -> (QuantizedWeight, perm). Returns the
    names used."""
    from .experts import install_quantized, is_fused_experts, is_pre_weighted

    used = set()
    for path, mod in list(model.named_modules()):
        if not is_fused_experts(mod) or is_pre_weighted(mod) or not hasattr(mod, "gate_up_proj"):
            continue
        prefixes = [path] + [(path + ".").replace(m, c)[:-1] for c, m in _PREFIX_RENAMES if m in path + "."]
        found = next(((p, ns) for p in prefixes for ns in _EXPERT_NAMES if f"{p}.0.{ns[2]}" in names), None)
        if found is None:
            continue
        prefix, (gate, up, down) = found
        if mod.is_transposed or not getattr(mod, "is_concatenated", True) or getattr(mod, "has_bias", False):
            raise ValueError(f"{who}: {path} stores its experts transposed, interleaved or with biases: "
                             "per-expert checkpoint layers are not mapped onto it")
        num, two_i, hidden = mod.gate_up_proj.shape
        want = [f"{prefix}.{e}.{p}" for e in range(num) for p in (gate, up, down)]
        missing = [n for n in want if n not in names]
        if missing:
            raise ValueError(f"{who}: expert layers {missing[:3]} are missing")
        gate_up, down_w, perms_gu, perms_d = [], [], [], []
        for e in range(num):
            (g, pg), (u, pu) = (convert(f"{prefix}.{e}.{p}", hidden, two_i // 2) for p in (gate, up))
            if (pg is None) != (pu is None) or (pg is not None and not torch.equal(pg, pu)):
                raise ValueError(f"{who}: expert {e}'s {gate} and {up} were reordered differently (act-order)")
            g, u = _common_spec([g, u], f"{who}: {prefix}.{e}")
            gate_up.append(_stack_rows(g, u))
            perms_gu.append(pg)
            d, pd = convert(f"{prefix}.{e}.{down}", two_i // 2, hidden)
            down_w.append(d)
            perms_d.append(pd)
        for pname, qws, perms, shape in (("gate_up_proj", gate_up, perms_gu, [two_i, hidden]),
                                         ("down_proj", down_w, perms_d, [hidden, two_i // 2])):
            qws = _common_spec(qws, f"{who}: {path}.{pname}")
            permuted = any(p is not None for p in perms)
            if permuted:  # a stack's experts all carry a permutation (identity where none)
                perms = [p if p is not None else torch.arange(shape[1], dtype=torch.int32) for p in perms]
            install_quantized(mod, pname, qws, perms if permuted else None)
            layers[f"{path}.{pname}"] = {"spec": str(qws[0].spec), "shape": shape, "experts": num, "bias": False,
                                         **({"in_perm": True} if permuted else {})}
        used.update(want)
    return used


def _rename_for(model: nn.Module, tensors: dict) -> dict:
    """The remaining checkpoint tensors under the model's own names (_PREFIX_RENAMES where the
    checkpoint's name is not the model's)."""
    keys = set(model.state_dict())
    out = {}
    for name, t in tensors.items():
        if name not in keys:
            name = next((alt for c, m in _PREFIX_RENAMES for alt in [name.replace(c, m)] if alt in keys), name)
        out[name] = t
    return out


def load_quantized_checkpoint(path: str, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """A GPTQ-, AWQ- or compressed-tensors-format HF directory as a model whose quantized layers are
    pyquant QuantLinear modules (module docstring); the other weights in ``dtype`` (default: as
    stored). Sets ``model.pyquant_config`` (method "<format>-checkpoint") so reports and
    save_quantized see the layers."""
    from transformers import AutoConfig

    from .io import uninitialized_model
    from .model import CONFIG_VERSION, set_submodule

    qc = checkpoint_config(path)
    if qc is None:
        raise ValueError(f"{path}: config.json has no GPTQ, AWQ or compressed-tensors quantization_config")
    reader = _Reader(path, qc)
    what = reader.kind.upper() if reader.kind != "compressed-tensors" else "compressed-tensors"
    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    tensors = _read_checkpoint(path)
    stored = next((t.dtype for n, t in tensors.items()
                   if t.is_floating_point() and "scale" not in n.rpartition(".")[2]), torch.float16)
    model = uninitialized_model(config, dtype or stored)
    layer_names = reader.layer_names(tensors)
    if not layer_names:
        raise ValueError(f"{path}: a {what} config but no '<layer>.{reader.marker}' tensors")
    layers = {}

    def convert(name: str, k: int, n: int):
        parts = {sfx: tensors.pop(f"{name}.{sfx}") for sfx in reader.suffixes if f"{name}.{sfx}" in tensors}
        missing = [sfx for sfx in reader.required if sfx not in parts]
        if missing:
            raise ValueError(f"{path}: {what} layer {name!r} lacks {missing}")
        return reader.convert(name, parts, k, n)

    used = _load_experts(model, set(layer_names), convert, layers, path)
    for name in [n for n in layer_names if n not in used]:
        try:
            n, k = _linear_weight(model.get_submodule(name)).shape
        except AttributeError:
            raise ValueError(f"{path}: {what} layer {name!r} does not exist in transformers' {config.model_type} "
                             "model") from None
        except ValueError as e:  # neither nn.Linear nor Conv1D
            raise ValueError(f"{path}: {what} layer {name!r}: {e}") from None
        qw, perm = convert(name, k, n)
        bias = tensors.pop(f"{name}.bias", None)
        q = QuantLinear.from_quantized(qw, None if bias is None else bias.to(dtype or stored), in_perm=perm)
        set_submodule(model, name, q)
        layers[name] = {"spec": str(qw.spec), "shape": [n, k], "bias": bias is not None,
                        **({"in_perm": True} if perm is not None else {})}
    for info in layers.values():
        info["method"] = f"{reader.kind}-checkpoint"
    result = model.load_state_dict({k: cast_floating(v, dtype) for k, v in _rename_for(model, tensors).items()},
                                   strict=False, assign=True)
    tied = getattr(config.get_text_config(), "tie_word_embeddings", False)
    if tied:
        model.tie_weights()  # the head shares the loaded input embedding
    left = [n for n in result.missing_keys if not any(n.startswith(layer + ".") for layer in layers)
            and not (tied and n.endswith("lm_head.weight"))]
    if left:
        raise ValueError(f"{path}: no tensor for {left[:5]}{' ...' if len(left) > 5 else ''}")
    unexpected = [k for k in result.unexpected_keys if not k.endswith("rotary_emb.inv_freq")]
    if unexpected:
        raise ValueError(f"{path}: tensors that fit no module: {unexpected[:5]}")
    model.pyquant_config = {"version": CONFIG_VERSION, "default_spec": next(iter(layers.values()))["spec"],
                            "skip": [], "overrides": {}, "method": f"{reader.kind}-checkpoint", "layers": layers,
                            "source": reader.source()}
    return model.eval()
