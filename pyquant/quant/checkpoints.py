"""Checkpoints quantized by other tools, in the GPTQ format (AutoGPTQ, GPTQModel, optimum;
``quantization_config.quant_method`` "gptq" in config.json) or AutoAWQ's GEMM format ("awq"),
loaded into pyquant's formats so that pyquant's kernels run them: a model quantized by another tool
is measured for quality and cost like one of pyquant's own.

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
Anything else (2/3 bits, 8-bit groups, zero-points past 15, experts stored per expert while
transformers fuses them) is refused with the reason.

AWQ's GEMM format (``version`` "gemm", ``zero_point`` true, 4 bits), per layer:
    qweight int32 [K, N / 8]        word c of row k holds the codes of columns 8c + AWQ_ORDER[i] at
                                    bits 4i .. 4i+3 (i = 0 .. 7)
    qzeros  int32 [ng, N / 8]       the zero-points, packed the same way (stored as they are)
    scales  fp16  [ng, N]           groups of G consecutive input columns
and maps onto ``int4-g{G'}-fp16`` as above (no act-order).
"""
from __future__ import annotations

import glob
import json
import os
from typing import Optional

import torch
from torch import nn

from ..formats import SUPPORTED_GROUP_SIZES, QuantizedWeight, QuantSpec
from .linear import QuantLinear
from .rtn import pack_codes

_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of an AWQ word holds column AWQ_ORDER[i] of its 8
FORMATS = ("gptq", "awq")


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
    """int32 words holding 32/bits codes each, lowest bits first, unpacked along ``dim`` (int64 codes)."""
    per = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int64)
    words = packed.to(torch.int64) & 0xFFFFFFFF  # the int32 words as unsigned
    codes = (words.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # [..., per] along a new last axis
    if dim == 0:  # [R, C, per] -> [R * per, C]
        return codes.permute(0, 2, 1).reshape(packed.shape[0] * per, packed.shape[1])
    return codes.reshape(packed.shape[0], packed.shape[1] * per)


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
        q = (codes - 128).to(torch.int8).contiguous()
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
    padded = torch.empty(n, pg * g, dtype=torch.float32)
    padded[:, :k] = codes
    padded[:, k:] = z[:, -1:]  # the ragged last group's padding dequantizes to 0
    return pack_codes(spec, padded, s, z, (n, k)), in_perm


def _read_checkpoint(path: str) -> dict:
    from safetensors.torch import load_file

    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise ValueError(f"{path}: no .safetensors files (GPTQ checkpoints in .bin files are not read)")
    tensors = {}
    for f in files:
        tensors.update(load_file(f))
    return tensors


def load_quantized_checkpoint(path: str, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """A GPTQ- or AWQ-format HF directory as a model whose quantized layers are pyquant QuantLinear
    modules (module docstring); the other weights in ``dtype`` (default: as stored). Sets
    ``model.pyquant_config`` (method "gptq-checkpoint" / "awq-checkpoint") so reports and
    save_quantized see the layers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .model import CONFIG_VERSION, set_submodule

    qc = checkpoint_config(path)
    if qc is None:
        raise ValueError(f"{path}: config.json has no GPTQ or AWQ quantization_config")
    kind = str(qc["quant_method"]).lower()
    bits = int(qc.get("bits", qc.get("w_bit", 4)))
    group = int(qc.get("group_size", qc.get("q_group_size", 128)))
    v2 = str(qc.get("checkpoint_format") or qc.get("format") or "gptq").lower() == "gptq_v2"  # GPTQModel: "format"
    if kind == "awq":
        version = str(qc.get("version", "gemm")).lower()
        if version != "gemm" or not qc.get("zero_point", True) or bits != 4:
            raise ValueError(f"{path}: AWQ version {version!r}, zero_point {qc.get('zero_point', True)}, "
                             f"{bits} bits: pyquant reads AWQ's GEMM format (4 bits with zero-points)")
    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    tensors = _read_checkpoint(path)
    stored = next((t.dtype for n, t in tensors.items() if t.is_floating_point() and not n.endswith("scales")),
                  torch.float16)
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or stored)
    layer_names = sorted({n[: -len(".qweight")] for n in tensors if n.endswith(".qweight")})
    if not layer_names:
        raise ValueError(f"{path}: a {kind.upper()} config but no '<layer>.qweight' tensors")
    layers = {}
    for name in layer_names:
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{path}: {kind.upper()} layer {name!r} does not exist in transformers' {config.model_type} "
                             "model (mixture-of-experts checkpoints with one layer per expert are not read: "
                             "transformers fuses the experts)") from None
        if isinstance(mod, nn.Linear):
            k, n = mod.in_features, mod.out_features
        elif type(mod).__name__ == "Conv1D":
            k, n = mod.weight.shape
        else:
            raise ValueError(f"{path}: {kind.upper()} layer {name!r} is a {type(mod).__name__}, not a linear layer")
        parts = {s: tensors.pop(f"{name}.{s}") for s in _SUFFIXES if f"{name}.{s}" in tensors}
        missing = [s for s in _SUFFIXES[:3] if s not in parts]
        if missing:
            raise ValueError(f"{path}: {kind.upper()} layer {name!r} lacks {missing}")
        who = f"{path}: {name}"
        if kind == "awq":
            qw, perm = convert_awq_layer(parts, group, k, n, who=who), None
        else:
            qw, perm = convert_gptq_layer(parts, bits, group, k, n, v2=v2, who=who)
        bias = tensors.pop(f"{name}.bias", None)
        q = QuantLinear.from_quantized(qw, None if bias is None else bias.to(dtype or stored), in_perm=perm)
        set_submodule(model, name, q)
        layers[name] = {"spec": str(qw.spec), "shape": [n, k], "bias": bias is not None,
                        "method": f"{kind}-checkpoint", **({"in_perm": True} if perm is not None else {})}
    result = model.load_state_dict({k: v.to(dtype) if dtype is not None and v.is_floating_point() else v
                                    for k, v in tensors.items()}, strict=False, assign=True)
    if getattr(config.get_text_config(), "tie_word_embeddings", False):
        model.tie_weights()  # the head shares the loaded input embedding
    tied = getattr(config.get_text_config(), "tie_word_embeddings", False)
    left = [n for n in result.missing_keys if n.rpartition(".")[0] not in layers
            and not (tied and n.endswith("lm_head.weight"))]
    if left:
        raise ValueError(f"{path}: no tensor for {left[:5]}{' ...' if len(left) > 5 else ''}")
    unexpected = [k for k in result.unexpected_keys if not k.endswith("rotary_emb.inv_freq")]
    if unexpected:
        raise ValueError(f"{path}: tensors that fit no module: {unexpected[:5]}")
    model.pyquant_config = {"version": CONFIG_VERSION, "default_spec": next(iter(layers.values()))["spec"],
                            "skip": [], "overrides": {}, "method": f"{kind}-checkpoint", "layers": layers,
                            "source": {"quant_method": kind, "bits": bits, "group_size": group,
                                       **({"desc_act": bool(qc.get("desc_act", False)), "sym": qc.get("sym"),
                                           "checkpoint_format": "gptq_v2" if v2 else "gptq"} if kind == "gptq"
                                          else {"version": "gemm"})}}
    return model.eval()
