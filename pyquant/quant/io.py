"""Saving and loading quantized models: ``save_quantized(model, dir)`` / ``load_quantized(dir)``.

A pyquant quantized directory holds:
    model.safetensors     every tensor of the state dict (quantized buffers + full-precision params);
                          a tensor shared by several names (tied embeddings) is stored once. Past
                          ``max_shard_size`` bytes the tensors go to model-00001-of-0000N.safetensors
                          ... instead, with Hugging Face's model.safetensors.index.json beside them
    pyquant_config.json   {"format": "pyquant.quantized", "format_version": 1 (one weights file) or 2
                          (shards), "pyquant_version", "quant": model.pyquant_config (per-layer specs
                          and shapes), "dtype", "aliases": {name: stored name}, "file": {"name",
                          "bytes"} (version 1) or "files": [{"name", "bytes"}, ...] (version 2),
                          "tensors": {name: {"dtype", "shape", "sha256"}}, "model_fingerprint",
                          "tokenizer_fingerprint"}; written last, so its presence means complete
    config.json (+ generation_config.json)  the Hugging Face config, to rebuild the architecture
    tokenizer files       when a tokenizer was given
Every problem found when loading (missing file or tensor, checksum mismatch, truncated file,
unknown or newer format version) raises ValueError naming it.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from typing import Optional

import torch
from torch import nn

from .. import __version__
from ..results import make_shareable
from .experts import expert_param_names, install_empty, is_fused_experts
from .linear import QuantLinear
from .model import set_submodule

FORMAT = "pyquant.quantized"
FORMAT_VERSION = 2  # the newest this reads; a single-file directory is still written as version 1
CONFIG_NAME = "pyquant_config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
MAX_SHARD_SIZE = "5GB"  # default: the size the Hugging Face hub's tooling long used for its shards
_SHARD_GLOB = "model-*-of-*.safetensors"


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 (hex) of a tensor's raw bytes in row-major order (any dtype)."""
    flat = t.detach().contiguous().reshape(-1).cpu()
    h = hashlib.sha256()
    if flat.numel():
        h.update(memoryview(flat.view(torch.uint8).numpy()))
    return h.hexdigest()


def is_quantized_dir(path) -> bool:
    """True if ``path`` is a directory written by save_quantized."""
    return os.path.isfile(os.path.join(str(path), CONFIG_NAME))


def dedupe_state_dict(model: nn.Module) -> "tuple[dict, dict]":
    """(tensors to store, aliases {name: stored name}) with tensors sharing storage stored once."""
    tensors, aliases, seen = {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().contiguous().cpu()
    return tensors, aliases


def float_dtype(model: nn.Module, default: Optional[torch.dtype] = torch.float32) -> Optional[torch.dtype]:
    """The dtype of the model's first floating-point parameter (its full-precision layers'), else ``default``."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), default)


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(size) -> int:
    """Bytes of a size given as an int or a string such as "5GB", "500MB", "2GiB" or "1.5 GB" (decimal
    units as Hugging Face's ``max_shard_size``, KiB/MiB/GiB binary). ValueError unless positive."""
    if isinstance(size, int) and not isinstance(size, bool):
        n = size
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(size))
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"size {size!r}: expected a number of bytes or a number with a unit (500MB, 5GB, 2GiB)")
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n <= 0:
        raise ValueError(f"size {size!r}: must be positive")
    return n


class ShardWriter:
    """Write tensors, as they come, to safetensors files of at most ``max_bytes`` of tensor data each
    (a larger tensor gets a file of its own): only the shard being filled is held, so a producer that
    builds tensors one layer at a time never has the whole checkpoint in memory twice. Shards go to
    temporary names; ``close()`` names them as Hugging Face does (model.safetensors when there is one,
    else model-00001-of-0000N.safetensors ... and model.safetensors.index.json) and returns
    [{"name", "bytes"}] per file; ``abort()`` removes what was written."""

    def __init__(self, path: str, max_bytes: int, metadata: dict):
        self.path, self.max_bytes, self.metadata = path, int(max_bytes), metadata
        self._pending, self._pending_bytes, self._written = {}, 0, []  # _written: (temporary path, names)
        self._seen = set()

    def add(self, name: str, t: torch.Tensor) -> None:
        if name in self._seen:
            raise ValueError(f"tensor {name!r} written twice")
        self._seen.add(name)
        nbytes = t.numel() * t.element_size()
        if self._pending and self._pending_bytes + nbytes > self.max_bytes:
            self._flush()
        self._pending[name] = t.detach().contiguous().cpu()
        self._pending_bytes += nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        tmp = os.path.join(self.path, f".tmp-shard-{len(self._written) + 1:05d}.safetensors")
        self._written.append((tmp, list(self._pending)))
        save_file(self._pending, tmp, metadata=self.metadata)
        make_shareable(tmp)
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list:
        if self._pending or not self._written:
            self._flush()
        n, weight_map, files = len(self._written), {}, []
        for i, (tmp, names) in enumerate(self._written, 1):
            name = WEIGHTS_NAME if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
            os.replace(tmp, os.path.join(self.path, name))
            files.append({"name": name, "bytes": os.path.getsize(os.path.join(self.path, name))})
            weight_map.update(dict.fromkeys(names, name))
        if n > 1:
            from ..results import atomic_file

            total = sum(f["bytes"] for f in files)
            with atomic_file(os.path.join(self.path, INDEX_NAME)) as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        return files

    def abort(self) -> None:
        for tmp, _ in self._written:
            if os.path.exists(tmp):
                os.remove(tmp)
        self._pending, self._written = {}, []


def weight_files(path: str) -> list:
    """The safetensors weight files of a model directory: those its model.safetensors.index.json
    names when it has one, else every *.safetensors file."""
    index = os.path.join(path, INDEX_NAME)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                names = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{index}: not a valid safetensors index ({e})") from None
        missing = [n for n in names if not os.path.isfile(os.path.join(path, n))]
        if missing:
            raise ValueError(f"{path}: weight file(s) {missing[:3]} named in {INDEX_NAME} are missing")
        return [os.path.join(path, n) for n in names]
    return sorted(glob.glob(os.path.join(path, "*.safetensors")))


def cast_floating(t: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    """``t`` on the CPU, in ``dtype`` if it is floating point and a dtype is given (the full-precision
    tensors a reader loads or an export writes)."""
    t = t.detach().cpu()
    return t.to(dtype) if dtype is not None and t.is_floating_point() else t


def write_model_files(path: str, tensors, metadata: dict, model: nn.Module, tokenizer=None, *,
                      last: str, who: str, max_shard_size=MAX_SHARD_SIZE, stale: tuple = ()) -> list:
    """The files of a model directory but its last one: ``tensors`` (a dict, or (name, tensor) pairs
    produced one at a time) to model.safetensors or, past ``max_shard_size``, to shards (ShardWriter),
    then the model's generation config and the tokenizer. ``last``, the file the caller writes at the
    end, is removed first, and so are earlier weight files and the ``stale`` names (files of another
    format that would misdescribe the new one): the directory is incomplete until ``last`` lands.
    Returns [{"name", "bytes"}] per weights file."""
    max_bytes = parse_size(max_shard_size)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{who}: {path} exists and is not a directory")
    os.makedirs(path, exist_ok=True)
    old = [os.path.join(path, n) for n in (last, WEIGHTS_NAME, INDEX_NAME, *stale)]
    old += glob.glob(os.path.join(path, _SHARD_GLOB)) + glob.glob(os.path.join(path, ".tmp-shard-*"))
    for f in old:
        if os.path.isfile(f):
            os.remove(f)
    writer = ShardWriter(path, max_bytes, metadata)
    try:
        for name, t in (tensors.items() if isinstance(tensors, dict) else tensors):
            writer.add(name, t)
        files = writer.close()
    except BaseException:
        writer.abort()
        raise
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        try:
            gen.save_pretrained(path)
        except Exception:  # an invalid generation config is not worth failing the write
            pass
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return files


def save_quantized(model: nn.Module, path, tokenizer=None, max_shard_size=MAX_SHARD_SIZE) -> str:
    """Write ``model`` (quantized with quantize_model) to directory ``path``; returns the path.

    Tensors go to model.safetensors (shards of at most ``max_shard_size``, e.g. "5GB", past that)
    with a sha256 each, the layer specs and format version to pyquant_config.json, the HF config to
    config.json, and the tokenizer when given. Files are written to temporary names and renamed,
    pyquant_config.json last.
    """
    qcfg = getattr(model, "pyquant_config", None)
    if not qcfg or not any(isinstance(m, QuantLinear) for m in model.modules()):
        raise ValueError("save_quantized: the model has no quantized layers (run pq.quantize_model first)")
    if getattr(model, "config", None) is None or not hasattr(model.config, "save_pretrained"):
        raise ValueError("save_quantized: the model has no Hugging Face config (model.config) to rebuild it from")
    tensors, aliases = dedupe_state_dict(model)
    path = str(path)
    files = write_model_files(path, tensors, {"format": FORMAT}, model, tokenizer, last=CONFIG_NAME,
                              who="save_quantized", max_shard_size=max_shard_size)
    model.config.save_pretrained(path)
    cfg_path = os.path.join(path, CONFIG_NAME)
    tok_fp = None
    if tokenizer is not None:
        from ..models import tokenizer_fingerprint

        tok_fp = tokenizer_fingerprint(tokenizer)
    from ..models import model_fingerprint

    meta = {
        "format": FORMAT,
        "format_version": 1 if len(files) == 1 else 2,
        "pyquant_version": __version__,
        "quant": qcfg,
        "dtype": str(float_dtype(model)).replace("torch.", ""),
        "aliases": aliases,
        **({"file": files[0]} if len(files) == 1 else {"files": files}),
        "tensors": {n: {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
                        "sha256": tensor_sha256(t)} for n, t in tensors.items()},
        "model_fingerprint": model_fingerprint(model),
        "tokenizer_fingerprint": tok_fp,
    }
    with open(cfg_path + ".tmp", "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(cfg_path + ".tmp", cfg_path)
    return path


def read_quantized_config(path) -> dict:
    """The parsed pyquant_config.json of a quantized directory, after checking format and version."""
    cfg_path = os.path.join(str(path), CONFIG_NAME)
    if not os.path.isfile(cfg_path):
        raise ValueError(f"{path} is not a pyquant quantized directory: {CONFIG_NAME} is missing")
    try:
        with open(cfg_path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{cfg_path}: unknown format {meta.get('format') if isinstance(meta, dict) else meta!r}, "
                         f"expected {FORMAT!r}")
    v = meta.get("format_version")
    if not isinstance(v, int) or v < 1:
        raise ValueError(f"{cfg_path}: unknown format_version {v!r}")
    if v > FORMAT_VERSION:
        raise ValueError(f"{cfg_path}: format_version {v} is newer than this pyquant reads ({FORMAT_VERSION}); "
                         "upgrade pyquant")
    for key in ("quant", "tensors", "file" if v == 1 else "files"):
        if key not in meta:
            raise ValueError(f"{cfg_path}: missing field {key!r}")
    return meta


def _read_tensors(path: str, meta: dict) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensors, where = {}, {}
    for entry in meta.get("files") or [meta["file"]]:
        wpath = os.path.join(path, entry["name"])
        if not os.path.isfile(wpath):
            raise ValueError(f"{path}: weights file {entry['name']} is missing")
        size, want = os.path.getsize(wpath), entry.get("bytes")
        if want is not None and size != want:
            raise ValueError(f"{wpath}: file is {size} bytes, expected {want} (truncated or replaced)")
        try:
            part = load_file(wpath)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise ValueError(f"{wpath}: cannot read safetensors file ({e})") from None
        twice = sorted(set(part) & set(tensors))
        if twice:
            raise ValueError(f"{wpath}: tensor(s) {twice[:3]} also stored in {where[twice[0]]}")
        tensors.update(part)
        where.update(dict.fromkeys(part, entry["name"]))

    def file_of(name):
        return os.path.join(path, where[name])

    expected = meta["tensors"]
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(f"{path}: missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} in its "
                         "weights file(s)")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ValueError(f"{file_of(extra[0])}: unexpected tensor(s) {extra[:5]} not listed in {CONFIG_NAME}")
    for name, info in expected.items():
        t = tensors[name]
        if list(t.shape) != list(info["shape"]) or str(t.dtype).replace("torch.", "") != info["dtype"]:
            raise ValueError(f"{file_of(name)}: tensor {name!r} is {t.dtype} {list(t.shape)}, "
                             f"expected {info['dtype']} {info['shape']}")
        if tensor_sha256(t) != info["sha256"]:
            raise ValueError(f"{file_of(name)}: checksum mismatch for tensor {name!r} (corrupt file)")
        # load_file leaves a tensor at its offset in the file (8-byte alignment at best); the CPU
        # kernels read weight codes 32-64 bytes at a time, about 5% slower when those loads split
        # cache lines. A copy gets torch's 64-byte-aligned storage (one tensor at a time).
        if t.data_ptr() % 64:
            tensors[name] = t.clone()
    return tensors


def _submodule(model: nn.Module, name: str) -> "nn.Module | None":
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def uninitialized_model(config, dtype: torch.dtype) -> nn.Module:
    """The causal LM of ``config`` (AutoModelForCausalLM.from_config) with its weights allocated but
    not initialized: a shell whose tensors are about to be loaded or replaced."""
    from transformers import AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def load_quantized(path, device="cpu", dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Rebuild a model written by save_quantized: the architecture from config.json
    (AutoModelForCausalLM.from_config), QuantLinear modules where the config says, then the checked
    tensors. Returns the model in eval mode on ``device``; full-precision parameters in ``dtype``
    (default: the dtype they were saved in). The tokenizer: ``pq.load_model(path)``.
    """
    from transformers import AutoConfig

    path = str(path)
    meta = read_quantized_config(path)
    tensors = _read_tensors(path, meta)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the Hugging Face config.json ({e})") from None
    saved_dtype = getattr(torch, meta.get("dtype", "float32"), torch.float32)
    model = uninitialized_model(config, saved_dtype)
    layers = meta["quant"].get("layers", {})
    for name, info in layers.items():
        out_f, in_f = info["shape"]
        if "experts" in info:  # a 3-D expert parameter saved as a QuantExpertStack (quant/experts.py)
            mod_name, _, pname = name.rpartition(".")
            mod = _submodule(model, mod_name)
            if mod is None or not is_fused_experts(mod) or pname not in expert_param_names(mod):
                raise ValueError(f"{path}: quantized experts {name!r} do not exist in the {config.model_type} "
                                 "architecture")
            install_empty(mod, pname, int(info["experts"]), out_f, in_f, info["spec"], saved_dtype,
                          in_perm=bool(info.get("in_perm")))
            continue
        if _submodule(model, name) is None:
            raise ValueError(f"{path}: quantized layer {name!r} does not exist in the {config.model_type} "
                             "architecture")
        # an empty shell on "meta": its tensors are the loaded ones (assign=True below), never allocated twice
        set_submodule(model, name, QuantLinear(in_f, out_f, info["spec"], bias=bool(info.get("bias")),
                                               device="meta", bias_dtype=saved_dtype,
                                               in_perm=bool(info.get("in_perm"))))
    aliases = meta.get("aliases", {})
    try:
        result = model.load_state_dict(tensors, strict=False, assign=True)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{path}: tensors do not fit the architecture: {e}") from None
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if k not in aliases]
    if unexpected or missing:
        raise ValueError(f"{path}: tensors do not fit the architecture: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for alias, target in aliases.items():  # re-tie shared tensors (e.g. lm_head.weight -> embed_tokens.weight)
        mod_name, _, attr = alias.rpartition(".")
        t_mod, _, t_attr = target.rpartition(".")
        src = getattr(model.get_submodule(t_mod), t_attr)
        mod = model.get_submodule(mod_name)
        if getattr(mod, attr) is not src:
            setattr(mod, attr, src)
    left = [n for n, t in model.state_dict().items() if t.is_meta]
    if left:
        raise ValueError(f"{path}: no tensor for {left[:5]}")
    model.pyquant_config = meta["quant"]
    model.eval()
    model.to(device)
    if dtype is not None:
        model.to(dtype)
    return model
