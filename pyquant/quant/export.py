"""Export a pyquant-quantized model as a compressed-tensors checkpoint: the format llm-compressor
writes and vLLM, SGLang and transformers (with the compressed-tensors package) load. A variant
measured here then ships as the same weights, bit for bit.

Per quantized linear layer ``<name>`` (N outputs, K inputs), the inverse of
``checkpoints.convert_compressed_layer``:

    int4-gG[-sym]  config group: "pack-quantized", weights {num_bits 4, strategy "group", group_size G}
        weight_packed      int32 [N, ceil(K / 8)]  code of (n, k) at bits 4*(k % 8) of word k // 8
                                                   (pyquant's unsigned code, i.e. the signed q + 8)
        weight_scale       [N, K / G]              pyquant's scales, in their dtype (fp32 or fp16)
        weight_zero_point  int32 [ceil(N / 8), K / G]  (asymmetric only) zero of (n, g) at bits
                                                   4*(n % 8) of word n // 8 (the signed zp + 8)
        weight_shape       int64 [2]               [N, K]
    int8           "pack-quantized", weights {num_bits 8, strategy "channel"}: weight_packed int32
                   [N, ceil(K / 4)] (q + 128), weight_scale [N, 1]
    int8-a8        "int-quantized": weight int8 [N, K], weight_scale [N, 1], and input_activations
                   {num_bits 8, strategy "token", dynamic}: pyquant's -a8 on int8 is one scale per token

compressed-tensors needs G to divide K. Where a layer's last group is ragged (SmolLM2's K = 576 at
G = 128), every layer of that spec is written in groups of G' = gcd(G, every K) columns (64 for
SmolLM2), each repeating its pyquant group's scale and zero-point: the same weights, a few more
scale bytes, and still one config group. Layers of one weight format form one config group,
``targets`` ["Linear"] when there is one group, else the layers' exact names (transformers'
dequantizing loader applies one scheme to every dense layer; vLLM reads each layer's group); every
other linear layer (the kept lm_head) is in ``ignore``.

Refused, with the reason: int4 with -a8 (pyquant quantizes activations per group of G columns,
which the format cannot say), int4 layers stored in act-order (``in_perm``: they need a g_idx,
which compressed-tensors removed in 2026; GPTQ's ``act_order="static"`` keeps the column order
and exports), mixture-of-experts expert stacks, and layers transformers does not build as
nn.Linear (GPT-2's Conv1D: compressed-tensors quantizes nn.Linear only).
"""
from __future__ import annotations

import json
import math
import os
import warnings
from typing import Optional

import torch
from torch import nn

from .checkpoints import pack_words
from .io import CONFIG_NAME, MAX_SHARD_SIZE, cast_floating, dedupe_state_dict, write_model_files
from .linear import QuantLinear, unpermute_columns
from .model import quantized_layers

FORMAT_NAME = "compressed-tensors"


def _layer_tensors(name: str, m: QuantLinear, group: Optional[int]) -> "tuple[dict, dict, str]":
    """(tensors, weight args, format) of one QuantLinear in compressed-tensors' layout (module
    docstring), an INT4 layer in groups of ``group`` columns (a divisor of its group size and K)."""
    qw, spec = m.qw.to("cpu"), m.spec
    n, k = qw.shape
    perm = m._buffers["in_perm"]
    if spec.bits == 4 and perm is not None:
        raise ValueError(f"{name}: quantized with act-order (its columns permuted, in_perm), which needs the g_idx "
                         "that compressed-tensors removed in 2026-08 (actorder 'group'): quantize with --act-order "
                         "static (act_order='static') to export")
    if spec.bits == 4 and spec.act_bits:
        raise ValueError(f"{name}: {spec} quantizes activations per group of {spec.group_size} columns, which "
                         "compressed-tensors cannot express (int8-a8, one scale per token, can)")
    codes = qw.codes()  # [N, K] int32: int8 signed, int4 in [0, 15]
    shape = torch.tensor([n, k], dtype=torch.int64)
    if spec.bits == 8:
        scale = qw.scales.reshape(n, 1)
        if perm is not None:  # one group per row: the layer's own column order needs no g_idx
            codes = unpermute_columns(codes, perm)
        args = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "group_size": None,
                "dynamic": False}
        if spec.act_bits:
            return {"weight": codes.to(torch.int8), "weight_scale": scale}, args, "int-quantized"
        return {"weight_packed": pack_words(codes + 128, 8, 1), "weight_scale": scale,
                "weight_shape": shape}, args, "pack-quantized"
    g, repeat = group, spec.group_size // group
    t = {"weight_packed": pack_words(codes, 4, 1),
         "weight_scale": qw.scales.repeat_interleave(repeat, 1)[:, : k // g].contiguous(), "weight_shape": shape}
    if qw.zeros is not None:
        t["weight_zero_point"] = pack_words(qw.zeros.repeat_interleave(repeat, 1)[:, : k // g], 4, 0)
    args = {"num_bits": 4, "type": "int", "symmetric": spec.symmetric, "strategy": "group", "group_size": g,
            "dynamic": False}
    return t, args, "pack-quantized"


_A8 = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True}


def _check_architecture(model: nn.Module, names: list) -> None:
    """ValueError for a quantized layer that transformers' own model of this config does not build as
    nn.Linear (a loader would find no Linear to give the compressed weights)."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(model.config)
    except Exception as e:  # e.g. a config that needs remote code: export without the check
        warnings.warn(f"export: cannot build transformers' model of this config to check the layer types ({e})",
                      stacklevel=3)
        return
    for name in names:
        try:
            mod = skeleton.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{name}: transformers' {model.config.model_type} model has no such layer") from None
        if not isinstance(mod, nn.Linear):
            raise ValueError(f"{name}: transformers builds it as {type(mod).__name__}, and compressed-tensors "
                             "quantizes nn.Linear layers only")


def export_compressed_tensors(model: nn.Module, path, tokenizer=None, dtype: Optional[torch.dtype] = None,
                              progress: bool = False, max_shard_size=MAX_SHARD_SIZE) -> dict:
    """Write ``model`` (pyquant QuantLinear layers) to directory ``path`` as a compressed-tensors
    checkpoint (module docstring); full-precision tensors in ``dtype`` (default: as they are);
    ``progress``: a tqdm bar over the layers. Layers are packed one at a time into safetensors shards
    of at most ``max_shard_size`` (io.ShardWriter: the packed copy of the model never exists whole).
    Files go to temporary names and are renamed, config.json last. Returns a summary: {"layers",
    "config_groups": {group: {"format", "weights", "int8_activations", "layers"}}, "regrouped":
    {layer: [G, G']} (ragged layers written with smaller groups), "ignore": [kept linear layers],
    "files": [{"name", "bytes"}]}."""
    from tqdm.auto import tqdm

    from .experts import QuantExpertStack

    if any(isinstance(m, QuantExpertStack) for m in model.modules()):
        raise ValueError("exporting mixture-of-experts expert stacks is not supported (their per-expert naming "
                         "differs by family); dense layers only")
    layers = quantized_layers(model)
    if not layers:
        raise ValueError("the model has no quantized layers: quantize it first (pyquant quantize)")
    if getattr(model, "config", None) is None:
        raise ValueError("the model has no Hugging Face config (model.config) to write")
    _check_architecture(model, list(layers))

    group_of = {}  # spec -> the group size it is written in: one for all its layers (one config group)
    for m in layers.values():
        if m.spec.bits == 4:
            group_of[m.spec] = math.gcd(group_of.get(m.spec, m.spec.group_size), m.in_features)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    tied = bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))
    if tied and isinstance(model.get_output_embeddings(), QuantLinear):
        config["tie_word_embeddings"] = tied = False  # the head is its own (quantized) tensor now
    state, aliases = dedupe_state_dict(model)  # a tied head is an alias of the input embedding
    if not tied:
        state.update({alias: state[target] for alias, target in aliases.items()})
    owned = tuple(f"{n}." for n in layers)
    kept = {name: t for name, t in state.items() if not name.startswith(owned)}
    fp = next((dtype or t.dtype for t in kept.values() if t.is_floating_point()), None)
    if fp is not None:
        config["dtype"] = str(fp).replace("torch.", "")
    groups, regrouped = {}, {}

    def tensors():  # (name, tensor) one layer at a time, the packed layers then the full-precision rest
        for name, m in tqdm(layers.items(), desc="packing", unit="layer", disable=not progress, leave=False):
            t, args, fmt = _layer_tensors(name, m, group_of.get(m.spec))
            yield from ((f"{name}.{sfx}", v) for sfx, v in t.items())
            if m.bias is not None:
                yield f"{name}.bias", cast_floating(m.bias, dtype or m.bias.dtype)
            if args["group_size"] and args["group_size"] != m.spec.group_size:
                regrouped[name] = [m.spec.group_size, args["group_size"]]
            groups.setdefault(json.dumps([fmt, args, bool(m.spec.act_bits)], sort_keys=True), []).append(name)
        for name, t in kept.items():
            v = cast_floating(t, dtype)
            # an untied head written from the embedding it shared: its own copy (safetensors stores no aliases)
            yield name, v.clone() if name in aliases and v.data_ptr() == t.data_ptr() else v

    path = str(path)
    files = write_model_files(path, tensors(), {"format": "pt"}, model, tokenizer, last="config.json",
                              who="export_compressed_tensors", max_shard_size=max_shard_size,
                              stale=(CONFIG_NAME,))  # an earlier pyquant directory's: not this format
    ignore = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear))
    config_groups, summary = {}, {}
    for i, (key, names) in enumerate(sorted(groups.items(), key=lambda kv: -len(kv[1]))):
        fmt, args, a8 = json.loads(key)
        config_groups[f"group_{i}"] = {"targets": ["Linear"] if len(groups) == 1 else sorted(names),
                                       "weights": args, "input_activations": dict(_A8) if a8 else None,
                                       "output_activations": None, "format": fmt}
        summary[f"group_{i}"] = {"format": fmt, "weights": args, "int8_activations": a8, "layers": len(names)}
    formats = {g["format"] for g in config_groups.values()}
    config["quantization_config"] = {
        "quant_method": FORMAT_NAME, "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "quantization_status": "compressed", "config_groups": config_groups, "ignore": ignore,
        "kv_cache_scheme": None, "global_compression_ratio": None}
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path + ".tmp", "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    os.replace(cfg_path + ".tmp", cfg_path)
    return {"layers": len(layers), "config_groups": summary, "regrouped": regrouped, "ignore": ignore,
            "files": files}
