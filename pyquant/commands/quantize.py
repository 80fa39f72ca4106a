"""`pyquant quantize`: quantize a model's linear layers (RTN) and save a pyquant quantized directory."""
from __future__ import annotations

import os
import time

HELP = "quantize a model's linear layers (int8 / int4-gG) and save it as a pyquant directory"
DESCRIPTION = """Quantize every linear layer of --model with round-to-nearest into --scheme, keep the
--skip layers in full precision, give --override layers another scheme, and write a pyquant quantized
directory (safetensors + pyquant_config.json + HF config + tokenizer) that every --model accepts.

Patterns are globs over full module names when they contain * ? [ (e.g. '*down_proj',
'model.layers.[0-3].*'), otherwise substrings ('lm_head', 'down_proj').

example:
  pyquant quantize --model demo --scheme int4-g128 --override '*down_proj=int8' --output smollm2-int4
"""


def add_arguments(p):
    p.add_argument("--model", required=True, help="'demo', an HF model directory, a .gguf file or a pyquant directory")
    p.add_argument("--scheme", required=True, help="default scheme: int8, int4-g32/64/128/256[-sym][-fp16]")
    p.add_argument("--skip", nargs="*", default=None, metavar="PATTERN",
                   help="layers kept in full precision (default: lm_head; '--skip' alone skips nothing)")
    p.add_argument("--override", action="append", default=[], metavar="PATTERN=SPEC",
                   help="give matching layers another scheme, e.g. '*down_proj=int8' (repeatable; first match wins)")
    p.add_argument("--output", required=True, metavar="DIR", help="directory to write")
    p.add_argument("--overwrite", action="store_true", help="write into DIR even if it holds files (files of the same name are replaced)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="dtype of the layers kept in full precision (quantization always starts from float32; default float32)")


def _parse_overrides(items) -> dict:
    from ..cli import UsageError

    out = {}
    for item in items:
        pattern, sep, spec = item.partition("=")
        if not sep or not pattern.strip() or not spec.strip():
            raise UsageError(f"--override expects PATTERN=SPEC (e.g. '*down_proj=int8'), got {item!r}")
        out[pattern.strip()] = spec.strip()
    return out


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def run(args) -> int:
    import torch

    from ..cli import UsageError
    from ..formats import QuantSpec

    spec = QuantSpec.parse(args.scheme)  # ValueError -> exit 2 before the (slow) model load
    overrides = _parse_overrides(args.override)
    for s in overrides.values():
        QuantSpec.parse(s)
    skip = ["lm_head"] if args.skip is None else list(args.skip)
    out = args.output
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--output {out} exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out) and not args.overwrite:
        raise UsageError(f"--output {out} is not empty (pass --overwrite to replace it)")

    from ..models import load_model, model_description
    from ..quant.io import save_quantized
    from ..quant.model import quantize_model

    t0 = time.perf_counter()
    print(f"loading {args.model} ...", flush=True)
    model, tok = load_model(args.model, dtype="float32")  # quantize from fp32 weights, whatever --dtype says
    before = model_description(model)
    t1 = time.perf_counter()
    quantize_model(model, spec, skip=skip, overrides=overrides, progress=True)
    if args.dtype != "float32":
        model.to(getattr(torch, args.dtype))  # the kept layers; quantized formats keep their scale dtype
    after = model_description(model)
    t2 = time.perf_counter()
    save_quantized(model, out, tokenizer=tok)
    t3 = time.perf_counter()

    layers = model.pyquant_config["layers"]
    per_spec = after["quant"]["specs"] if after["quant"] else {}
    disk = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if os.path.isfile(os.path.join(out, f)))
    print(f"quantized {len(layers)} linear layers: " + ", ".join(f"{n} x {s}" for s, n in sorted(per_spec.items())))
    print(f"kept in full precision: skip={skip}")
    ratio = before["weight_bytes"] / max(after["weight_bytes"], 1)
    print(f"weights in memory: {_mib(before['weight_bytes'])} -> {_mib(after['weight_bytes'])} ({ratio:.2f}x smaller)")
    print(f"written: {out} ({_mib(disk)} on disk)")
    print(f"time: load {t1 - t0:.1f} s, quantize {t2 - t1:.1f} s, save {t3 - t2:.1f} s")
    return 0
