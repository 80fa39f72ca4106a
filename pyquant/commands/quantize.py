"""`pyquant quantize`: quantize a model's linear layers (RTN or GPTQ) and save a pyquant quantized directory."""
from __future__ import annotations

import os
import time
import warnings

from . import add_model_argument
from .outputs import add_shard_argument

HELP = "quantize a model's linear layers (int8 / int4-gG) and save it as a pyquant directory"
DESCRIPTION = """Quantize every linear layer of --model into --scheme, keep the --skip layers in full
precision, give --override layers another scheme, and write a pyquant quantized directory
(safetensors + pyquant_config.json + HF config + tokenizer) that every --model accepts.

--method rtn (default) rounds each weight to the nearest grid point. --method gptq corrects each
column's rounding error in the columns not yet quantized, from the layer inputs seen on
calibration text (--calibration, default: the built-in text of about 9,600 tokens); decoder layers
are done one at a time, each calibrated on the outputs of the layers already quantized. Both
write the same formats, so every kernel and tool runs either. GPTQ goes left to right, each
group's grid from the error-corrected weights (--act-order off, the default). --act-order static
takes each layer's columns by decreasing input energy (GPTQ's desc_act) with every group's grid
fixed from the weights first, so the layer keeps its own column order (llm-compressor's "static"
actorder; experts too). --act-order permuted keeps INT4 groups contiguous in that order, and the
layer gathers its input to match (in_perm, a small cost per call; expert weights keep their
order; `pyquant export` cannot write it).

Mixture-of-experts models whose experts transformers stores as 3-D parameters (Mixtral, Qwen3-MoE,
OLMoE, gpt-oss, Llama 4, ...) get every expert quantized too, run through pyquant's kernels;
patterns see them as '<experts module>.gate_up_proj' / '.down_proj' (e.g.
'*experts.down_proj=int8'). GPTQ calibrates each expert on the calibration tokens routed to it (a
layer's experts hold an [in, in] H each at once: for Mixtral's down_proj 8 x 14336^2 floats,
6.6 GB); an expert none of them reach is rounded to nearest ("experts_rtn" in
pyquant_config.json). The routers (linear layers from the hidden size to the number of experts)
stay in full precision unless --quantize-routers, as llama.cpp keeps ffn_gate_inp: they are small
and their top-k choice is what rounding would flip. Weights of other shapes or modules (nn.Linear
subclasses with their own forward, JetMoE's experts) stay in full precision, with a warning for
3-D ones.

Patterns are globs over full module names when they contain * ? [ (e.g. '*down_proj',
'model.layers.[0-3].*'), otherwise substrings ('lm_head', 'down_proj'). A --skip or --override
pattern that matches no linear layer is an error.

examples:
  pyquant quantize --model demo --scheme int4-g128 --override '*down_proj=int8' --output smollm2-int4
  pyquant quantize --model demo --scheme int4-g128 --method gptq --output smollm2-int4-gptq
  pyquant quantize --model my-hf-dir --scheme int4-g128 --method gptq --calibration corpus.txt \\
      --calib-seqs 128 --calib-len 2048 --output my-int4-gptq
"""


def add_arguments(p):
    add_model_argument(p, dtype=False)  # its own --dtype, below, is the kept layers'
    p.add_argument("--scheme", required=True, help="default scheme: int8, int4-g32/64/128/256[-sym][-fp16][-a8] "
                        "(-a8: activations quantized to int8 per token and group at run time)")
    p.add_argument("--skip", nargs="*", default=None, metavar="PATTERN",
                   help="layers kept in full precision (default: lm_head; '--skip' alone skips nothing)")
    p.add_argument("--override", action="append", default=[], metavar="PATTERN=SPEC",
                   help="give matching layers another scheme, e.g. '*down_proj=int8' (repeatable; first match wins)")
    p.add_argument("--quantize-routers", action="store_true",
                   help="quantize mixture-of-experts routers as well (default: kept in full precision)")
    p.add_argument("--output", required=True, metavar="DIR", help="directory to write")
    p.add_argument("--overwrite", action="store_true", help="write into DIR even if it holds files (files of the same name are replaced)")
    add_shard_argument(p)
    p.add_argument("--method", default="rtn", choices=("rtn", "gptq"),
                   help="rtn: round to nearest (default); gptq: error-correcting, calibrated on --calibration")
    p.add_argument("--calibration", nargs="+", default=None, metavar="FILE",
                   help="GPTQ: UTF-8 text file(s) to calibrate on (default: the built-in calibration text)")
    p.add_argument("--calib-seqs", type=int, default=32, metavar="N",
                   help="GPTQ: at most N windows of --calib-len tokens, cut one after another (default 32)")
    p.add_argument("--calib-len", type=int, default=512, metavar="T", help="GPTQ: tokens per window (default 512)")
    p.add_argument("--damp", type=float, default=0.01,
                   help="GPTQ: fraction of the mean Hessian diagonal added to it (default 0.01)")
    p.add_argument("--plain-v", action="store_true",
                   help="GPTQ: calibrate value projections on their inputs alone, not on what the attention makes "
                        "of them (faster, no eager attention; worse on models with attention sinks)")
    p.add_argument("--act-order", nargs="?", const="permuted", default=None, choices=("off", "static", "permuted"),
                   help="GPTQ's column order. 'off' (default): left to right, each group's grid from the "
                        "error-corrected weights; 'static': by decreasing input energy (GPTQ's desc_act), each "
                        "group's grid fixed first from the weights, the layer in its own column order; 'permuted' "
                        "(the bare flag): that order with INT4 groups contiguous in it, the layer gathering its "
                        "input to match (in_perm), as act-order GPTQ checkpoints do")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="dtype of the layers kept in full precision (default float32; quantization always rounds in "
                        "float32, from the weights as stored)")


def _parse_overrides(items) -> dict:
    from ..cli import UsageError

    out = {}
    for item in items:
        pattern, sep, spec = item.partition("=")
        if not sep or not pattern.strip() or not spec.strip():
            raise UsageError(f"--override expects PATTERN=SPEC (e.g. '*down_proj=int8'), got {item!r}")
        out[pattern.strip()] = spec.strip()
    return out


def _calibration_texts(args) -> "list | None":
    """The --calibration texts, read before the (slow) model load (None: the built-in text);
    UsageError on bad options."""
    from ..cli import UsageError

    if args.calib_seqs < 1 or args.calib_len < 2:
        raise UsageError(f"--calib-seqs must be >= 1 and --calib-len >= 2, got {args.calib_seqs}, {args.calib_len}")
    if not 0 <= args.damp < 1e3:
        raise UsageError(f"--damp must be >= 0, got {args.damp}")
    if args.calibration is None:
        return None
    texts = []
    for path in args.calibration:
        try:
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--calibration: cannot read {path}: {e}") from None
    if not any(t.strip() for t in texts):
        raise UsageError("--calibration: the text is empty")
    return texts


def _check_patterns(model, skip, overrides, user_skip: bool) -> None:
    """UsageError naming the --skip / --override patterns that match no linear layer of ``model``
    (with a few real layer names); a note when the default --skip lm_head matches none."""
    from ..cli import UsageError
    from ..quant.model import expert_layer_names, linear_layer_names, unmatched_patterns

    names = linear_layer_names(model) + expert_layer_names(model)
    given = [("--skip", p) for p in skip] if user_skip else []
    given += [("--override", p) for p in overrides]
    missing = set(unmatched_patterns(names, [p for _, p in given]))
    unmatched = [f"{flag} {p!r}" for flag, p in given if p in missing]
    if unmatched:
        examples, blocks = [], set()
        for n in names[:-1]:  # one layer per kind of block (self_attn, mlp, ...), then the last one
            block = n.rpartition(".")[0].rpartition(".")[2]
            if block not in blocks and len(examples) < 2:
                blocks.add(block)
                examples.append(n)
        examples += names[-1:]
        verb = "matches" if len(unmatched) == 1 else "match"
        raise UsageError(f"{', '.join(unmatched)} {verb} none of the {len(names)} linear layers"
                         + (f" (e.g. {', '.join(examples)})" if examples else "")
                         + "; a pattern with * ? [ must match the whole name, e.g. '*down_proj'")
    if not user_skip and len(unmatched_patterns(names, skip)) == len(skip):
        print(f"note: no linear layer matches the default --skip {' '.join(skip)}: every layer is quantized")


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def run(args) -> int:
    import torch

    from ..cli import UsageError
    from ..formats import QuantSpec
    from .outputs import check_output, model_path, writing, written_directory

    spec = QuantSpec.parse(args.scheme)  # ValueError -> exit 2 before the (slow) model load
    overrides = _parse_overrides(args.override)
    for s in overrides.values():
        QuantSpec.parse(s)
    skip = ["lm_head"] if args.skip is None else list(args.skip)
    gptq_only = [f for f, on in (("--act-order", args.act_order is not None), ("--plain-v", args.plain_v),
                                 ("--calibration", args.calibration is not None)) if on]
    if gptq_only and args.method != "gptq":
        raise UsageError(f"{', '.join(gptq_only)}: GPTQ options, pass --method gptq")
    texts = _calibration_texts(args) if args.method == "gptq" else None
    out = args.output
    if os.path.isdir(out) and os.listdir(out) and not args.overwrite:
        raise UsageError(f"--output {out} is not empty (pass --overwrite to replace it)")
    check_output(out, {"--model": model_path(args.model), "--calibration": args.calibration}, directory=True)

    from ..models import load_model, model_description
    from ..quant.io import save_quantized
    from ..quant.model import quantize_model

    t0 = time.perf_counter()
    print(f"loading {args.model} ...", flush=True)
    # RTN rounds each weight in float32 whatever it is stored in, so it starts from the checkpoint's
    # own dtype (a bf16 model is not first doubled in memory); GPTQ's calibration runs in float32.
    model, tok = load_model(args.model, dtype="auto" if args.method == "rtn" else "float32")
    _check_patterns(model, skip, overrides, user_skip=args.skip is not None)
    before = model_description(model)
    t1 = time.perf_counter()
    gptq = {}
    if args.method == "gptq":
        from ..quant.gptq import calibration_ids

        try:
            calib = calibration_ids(tok, texts, seq_len=args.calib_len, sequences=args.calib_seqs)
        except ValueError as e:
            raise UsageError(f"--calibration: {e}") from None
        print(f"GPTQ: calibrating on {len(calib)} windows of {args.calib_len} tokens", flush=True)
        gptq = {"method": "gptq", "calibration": calib, "damp": args.damp, "attention_aware": not args.plain_v,
                "act_order": {None: False, "off": False, "static": "static", "permuted": True}[args.act_order]}
    with warnings.catch_warnings():  # _check_patterns said it in the CLI's words
        warnings.filterwarnings("ignore", message="quantize_model: pattern", category=UserWarning)
        quantize_model(model, spec, skip=skip, overrides=overrides, progress=True,
                       keep_routers=not args.quantize_routers, **gptq)
    model.to(getattr(torch, args.dtype))  # the kept layers; quantized formats keep their scale dtype
    after = model_description(model)
    t2 = time.perf_counter()
    with writing(out):
        save_quantized(model, out, tokenizer=tok, max_shard_size=args.max_shard_size)
    t3 = time.perf_counter()

    layers = model.pyquant_config["layers"]
    per_spec = after["quant"]["specs"] if after["quant"] else {}
    stacks = [v["experts"] for v in layers.values() if "experts" in v]
    moe = f", {len(stacks)} of them mixture-of-experts weights ({sum(stacks)} experts)" if stacks else ""
    print(f"quantized {len(layers)} linear layers ({args.method}{moe}): "
          + ", ".join(f"{n} x {s}" for s, n in sorted(per_spec.items())))
    n_rtn = model.pyquant_config.get("gptq", {}).get("experts_rtn")
    if n_rtn:
        print(f"{n_rtn} experts saw no calibration token: rounded to nearest (more --calib-seqs reaches more)")
    routers = model.pyquant_config.get("routers_kept", [])
    kept = f", {len(routers)} mixture-of-experts routers (--quantize-routers quantizes them)" if routers else ""
    print(f"kept in full precision: skip={skip}{kept}")
    ratio = before["weight_bytes"] / max(after["weight_bytes"], 1)
    print(f"weights in memory: {_mib(before['weight_bytes'])} -> {_mib(after['weight_bytes'])} ({ratio:.2f}x smaller)")
    print(f"written: {written_directory(out)}")
    print(f"time: load {t1 - t0:.1f} s, quantize {t2 - t1:.1f} s, save {t3 - t2:.1f} s")
    return 0
