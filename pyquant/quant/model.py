"""``quantize_model``: replace a model's linear layers by QuantLinear, in place.

Name patterns (``skip`` and ``overrides`` keys) are matched against full dotted module names
(e.g. ``model.layers.3.mlp.down_proj``): a pattern containing ``*``, ``?`` or ``[`` is an fnmatch
glob over the whole name (``*down_proj``, ``model.layers.[0-3].*``); any other pattern matches
when it is a substring of the name (``lm_head``, ``down_proj``, ``layers.0.``).
"""
from __future__ import annotations

import fnmatch
import warnings
from typing import Iterable, Optional

from torch import nn

from ..formats import QuantSpec
from .experts import QuantExpertStack, expert_param_names, is_fused_experts, quantize_experts
from .gptq import DEFAULT_BLOCK, DEFAULT_DAMP, gptq_quantize_layers
from .linear import QuantLinear

CONFIG_VERSION = 1
_GLOB_CHARS = set("*?[")


def name_matches(name: str, pattern: str) -> bool:
    """True if module ``name`` matches ``pattern`` (an fnmatch glob if it has * ? [, else a substring)."""
    if _GLOB_CHARS & set(pattern):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def is_quantizable(module: nn.Module) -> bool:
    """True for nn.Linear and transformers' Conv1D (GPT-2 style), the layers quantize_model replaces.
    Not for an nn.Linear subclass with its own forward (PhiMoE's router returns three tensors): a
    QuantLinear would not answer its callers."""
    if isinstance(module, nn.Linear):
        return type(module).forward is nn.Linear.forward
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` with ``module``."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


def linear_layer_names(model: nn.Module) -> list:
    """Names of the layers quantize_model considers (``is_quantizable``), in module order."""
    return [n for n, m in model.named_modules() if n and is_quantizable(m)]


def expert_layer_names(model: nn.Module) -> list:
    """Names ("<experts module>.<projection>") of the 3-D expert parameters quantize_model considers
    (pyquant/quant/experts.py), in module order."""
    return [f"{n}.{p}" for n, m in model.named_modules() if is_fused_experts(m)
            for p in expert_param_names(m) if not isinstance(getattr(m, p), QuantExpertStack)]


_EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def router_layer_names(model: nn.Module) -> list:
    """Names of the mixture-of-experts routers among the layers quantize_model considers: the
    nn.Linear layers from the hidden size to the config's number of experts (HunYuan-MoE's
    ``gate.wg``, JetMoE's ``router.layer``, AFMoE's ``router.gate``; most routers in transformers
    are parameters or Linear subclasses with their own forward, which stay full precision anyway)."""
    cfg = getattr(model, "config", None)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    counts = {v for k in _EXPERT_COUNT_KEYS for v in [getattr(text, k, None)] if isinstance(v, int) and v > 1}
    if not counts:
        return []
    hidden = getattr(text, "hidden_size", None)
    return [n for n, m in model.named_modules() if n and is_quantizable(m) and isinstance(m, nn.Linear)
            and m.out_features in counts and (hidden is None or m.in_features == hidden)]


def unmatched_patterns(names, patterns) -> list:
    """The ``patterns`` (skip or override) that match none of the layer ``names``."""
    return [p for p in patterns if not any(name_matches(n, p) for n in names)]


def _check_patterns(patterns, what: str) -> list:
    if isinstance(patterns, str):
        patterns = (patterns,)
    out = []
    for p in patterns or ():
        if not isinstance(p, str) or not p:
            raise ValueError(f"quantize_model: {what} patterns must be non-empty strings, got {p!r}")
        out.append(p)
    return out


def _untie_output_embeddings(model: nn.Module, lm_head_names: Iterable[str]) -> None:
    """Quantizing a tied LM head must leave the input embedding alone: mark the model untied so
    transformers never re-ties the (now quantized) head to the embedding."""
    cfg = getattr(model, "config", None)
    if cfg is None or not lm_head_names:
        return
    for attr in ("tie_word_embeddings",):
        if getattr(cfg, attr, False):
            setattr(cfg, attr, False)
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else None
    if text_cfg is not None and text_cfg is not cfg and getattr(text_cfg, "tie_word_embeddings", False):
        text_cfg.tie_word_embeddings = False


def quantize_model(model: nn.Module, spec: "QuantSpec | str", skip=("lm_head",), overrides: Optional[dict] = None,
                   progress: Optional[bool] = None, method: str = "rtn", calibration=None,
                   damp: float = DEFAULT_DAMP, block_size: int = DEFAULT_BLOCK, attention_aware: bool = True,
                   keep_routers: bool = True, act_order: "bool | str | None" = None) -> nn.Module:
    """Quantize the model's nn.Linear (and Conv1D) layers in place, and the mixture-of-experts
    weights transformers stores as 3-D parameters (named "<experts module>.gate_up_proj" etc.,
    pyquant/quant/experts.py); returns the model.

    spec: the default scheme ("int4-g128", "int8", ...). skip: name patterns kept in full precision.
    overrides: {pattern: spec} for layers that get another scheme; the first matching pattern (in dict
    order) wins; skip wins over overrides. Patterns are globs or substrings (see the module docstring);
    a pattern that matches no layer gives a warning. Layers already quantized are left as they are.
    progress: show a tqdm bar (None: only for models with 64 or more layers to quantize, or GPTQ).
    method: "rtn" (round to nearest) or "gptq" (error-correcting; needs ``calibration``, a list of
    1-D token-id tensors such as ``calibration_ids`` makes; damp and block_size as in
    ``gptq_quantize_weight``; attention_aware=False gives value projections the plain X^T X
    instead of the attention-mixed H, see ``pyquant.quant.gptq``; act_order: the column order,
    False (None, the default): left to right, each group's grid from the corrected weights;
    "static": by decreasing H diagonal, each group's grid fixed from the weights first, the weight
    in its own column order; True: in that order with groups contiguous in it, an INT4 linear then
    carrying an ``in_perm`` (GPTQ's desc_act; expert stacks keep their column order)). Both
    methods write the same formats.
    keep_routers: keep the mixture-of-experts routers (``router_layer_names``) in full precision
    whatever the patterns say, as llama.cpp keeps ``ffn_gate_inp``: they are small, their top-k
    choice is what a rounding error would flip, and some models read their ``.weight`` directly.

    Records ``model.pyquant_config`` = {"version", "default_spec", "skip", "overrides", "method",
    "layers": {name: {"spec", "shape": [out, in], "bias", "method"} (+ "in_perm": True with
    act-order)}, "routers_kept": [names]} (expert stacks add "experts": E, the shape being each
    expert's) (plus "gptq": {"sequences", "tokens", "damp", "block_size", "act_order",
    "sequential_layers", "attention_aware_v"}, and "experts_rtn": experts no calibration token
    reached, rounded to nearest), used by save_quantized and reports.
    A tied LM head that gets quantized is untied first (the input embedding keeps full precision).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"quantize_model needs an nn.Module, got {type(model).__name__}")
    if method not in ("rtn", "gptq"):
        raise ValueError(f"quantize_model: method must be 'rtn' or 'gptq', got {method!r}")
    if act_order not in (None, False, True, "static"):
        raise ValueError(f"quantize_model: act_order must be False, True or 'static', got {act_order!r}")
    if act_order and method != "gptq":
        raise ValueError("quantize_model: act_order needs method='gptq' "
                         "(rounding to nearest has no column order)")
    if method == "gptq" and not calibration:
        raise ValueError("quantize_model: method='gptq' needs calibration token ids (see pyquant.quant.calibration_ids)")
    default = QuantSpec.parse(spec)
    skip = _check_patterns(skip, "skip")
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError(f"quantize_model: overrides must be a dict {{pattern: spec}}, got {type(overrides).__name__}")
    over = {}
    for p, s in (overrides or {}).items():
        _check_patterns([p], "override")
        over[p] = QuantSpec.parse(s)

    candidates = [(n, model.get_submodule(n)) for n in linear_layer_names(model)]
    expert_names = expert_layer_names(model)
    routers = router_layer_names(model) if keep_routers else []
    kept = set(routers)

    def chosen_spec(name):
        if name in kept or any(name_matches(name, p) for p in skip):
            return None
        return next((s for p, s in over.items() if name_matches(name, p)), default)

    plan = [(n, s) for n, _ in candidates for s in [chosen_spec(n)] if s is not None]
    expert_plan = [(n, s) for n in expert_names for s in [chosen_spec(n)] if s is not None]
    # an override shadowed by an earlier one still matches layers: only patterns matching none warn
    unused = unmatched_patterns([n for n, _ in candidates] + expert_names, list(skip) + list(over))
    if unused:
        warnings.warn(f"quantize_model: pattern(s) {unused} matched no linear layer", stacklevel=2)
    only_routers = [p for p in unmatched_patterns([n for n, _ in candidates if n not in kept] + expert_names, over)
                    if p not in unused]
    if only_routers:
        warnings.warn(f"quantize_model: override pattern(s) {only_routers} matched only mixture-of-experts routers, "
                      f"which stay in full precision (keep_routers=False quantizes them)", stacklevel=2)
    odd = [n for n, p in model.named_parameters() if p.dim() >= 3 and p.is_floating_point()
           and not any(n.startswith(e) for e in expert_names)]
    if odd:
        warnings.warn(f"quantize_model: {len(odd)} weight(s) of 3 or more dimensions are neither linear layers nor "
                      f"expert weights pyquant runs (e.g. {odd[0]}): they stay in full precision", stacklevel=2)

    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names_of = {id(m): n for n, m in candidates}
    head_name = names_of.get(id(out_emb)) if out_emb is not None else None
    if head_name is not None and any(n == head_name for n, _ in plan):
        _untie_output_embeddings(model, [head_name])

    extra = {}
    if method == "gptq":
        act_order = act_order or False  # None: the default, left to right
        stats = gptq_quantize_layers(model, plan + expert_plan, calibration, make_layer=_from_quantized, damp=damp,
                                     block_size=block_size, progress=progress is not False,
                                     attention_aware=attention_aware, act_order=act_order)
        extra["gptq"] = {**stats, "damp": damp, "block_size": block_size, "act_order": act_order}
    else:
        show = progress if progress is not None else len(plan) + len(expert_plan) >= 64
        it = plan + expert_plan
        if show:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=f"quantizing to {default}", unit="layer")
        experts = set(n for n, _ in expert_plan)
        for name, s in it:
            if name in experts:
                mod_name, _, pname = name.rpartition(".")
                quantize_experts(model.get_submodule(mod_name), pname, s)
            else:
                set_submodule(model, name, QuantLinear.from_linear(model.get_submodule(name), s))
    layers = {}
    for name, s in plan:
        q = model.get_submodule(name)
        layers[name] = {"spec": str(s), "shape": [q.out_features, q.in_features], "bias": q.bias is not None,
                        "method": method, **({"in_perm": True} if q.in_perm is not None else {})}
    for name, s in expert_plan:  # a QuantExpertStack: "experts" matrices of [out, in] each
        q = model.get_submodule(name)
        e0 = q.expert(0)
        layers[name] = {"spec": str(s), "shape": [e0.out_features, e0.in_features], "experts": len(q),
                        "bias": False, "method": method}

    cfg = dict(getattr(model, "pyquant_config", None) or {})
    prev_layers = dict(cfg.get("layers", {}))
    prev_layers.update(layers)
    cfg.update({"version": CONFIG_VERSION, "default_spec": str(default), "skip": list(skip),
                "overrides": {p: str(s) for p, s in over.items()}, "method": method, "layers": prev_layers,
                "routers_kept": routers, **extra})
    model.pyquant_config = cfg
    return model


def _from_quantized(linear: nn.Module, qw, in_perm=None) -> QuantLinear:
    b = getattr(linear, "bias", None)
    return QuantLinear.from_quantized(qw, None if b is None else b.detach(), in_perm=in_perm)


def quantized_layers(model: nn.Module) -> dict:
    """{module name: QuantLinear} for every quantized layer in the model."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
