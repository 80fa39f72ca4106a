"""`pyquant export`: write a quantized model as a compressed-tensors checkpoint, to ship what was measured."""
from __future__ import annotations

import os
import time

from . import add_model_argument
from .outputs import add_shard_argument

HELP = "write a quantized model as a compressed-tensors checkpoint (the format vLLM and SGLang serve)"
DESCRIPTION = """Write --model (a pyquant quantized directory, or a GPTQ / AWQ / compressed-tensors checkpoint that
pyquant reads) as a compressed-tensors checkpoint: llm-compressor's format, which vLLM and SGLang
serve and transformers loads with the compressed-tensors package (checked here against that package
and transformers; vLLM and SGLang need a GPU and were not run). The quantized weights are the
same values, bit for bit: the directory is read back after writing and every layer compared
(--no-verify skips that).

int8 and int4-gG (asymmetric or -sym) become "pack-quantized" weights, int8-a8 the "int-quantized"
W8A8 scheme (int8 activations per token, as pyquant's). compressed-tensors needs each group to
divide the layer's in_features: where pyquant's last group is ragged (SmolLM2's 576 inputs at
G = 128) the spec is written in groups of gcd(G, every in_features) columns (64 there), each
repeating its scale: the same weights, a few more scale bytes. Refused with the reason: int4-a8
(per-group activations), int4 layers quantized with --act-order (permuted; --act-order static
exports), mixture-of-experts expert stacks, GPT-2-style Conv1D layers.

Scales keep their dtype: a serving stack that runs in fp16 or bf16 may round fp32 scales to it;
quantize with an -fp16 scheme (int4-g128-fp16) to ship scales that an fp16 model holds exactly.
Loading it in transformers: AutoModelForCausalLM.from_pretrained(DIR,
quantization_config=CompressedTensorsConfig(dequantize=True)) (full-precision weights). That
loader applies one scheme to every dense layer, so a model exported with --override layers (one
config group per scheme) does not load there; vLLM picks each layer's group by its name.

examples:
  pyquant quantize --model demo --scheme int4-g128-fp16 --method gptq --output smollm2-int4
  pyquant export --model smollm2-int4 --dtype float16 --output smollm2-int4-ct
"""


def add_arguments(p):
    add_model_argument(p, dtype=False)
    p.add_argument("--output", required=True, metavar="DIR", help="directory to write")
    p.add_argument("--overwrite", action="store_true",
                   help="write into DIR even if it holds files (files of the same name are replaced)")
    add_shard_argument(p)
    p.add_argument("--dtype", default="auto", choices=("auto", "float16", "bfloat16", "float32"),
                   help="dtype of the full-precision weights written (embeddings, norms, kept layers); 'auto' "
                        "(default): as --model stores them. Quantized layers keep their format")
    p.add_argument("--no-verify", action="store_true", help="do not read the written directory back to compare")


def _verify(model, out: str, dtype) -> int:
    """Read ``out`` back with pyquant's compressed-tensors reader; ValueError unless every quantized
    layer dequantizes to the same values and every other tensor equals the model's (cast to
    ``dtype``, the one written, when given). Returns the layers compared."""
    import torch

    from ..quant.checkpoints import load_quantized_checkpoint
    from ..quant.io import cast_floating
    from ..quant.model import quantized_layers

    back = load_quantized_checkpoint(out)
    mine, theirs = quantized_layers(model), quantized_layers(back)
    if set(mine) != set(theirs):
        raise ValueError(f"export check: {out} reads back with other quantized layers "
                         f"({sorted(set(mine) ^ set(theirs))[:3]})")

    from tqdm.auto import tqdm

    for name, m in tqdm(mine.items(), desc="checking", unit="layer", leave=False):
        bias, other = m.bias, theirs[name].bias
        if not torch.equal(m.dequantized_weight(torch.float64), theirs[name].dequantized_weight(torch.float64)) or (bias is None) != (other is None) or (
                bias is not None and not torch.equal(cast_floating(bias, dtype), other)):
            raise ValueError(f"export check: layer {name} reads back with other weights")
    owned = tuple(f"{n}." for n in mine)
    got = back.state_dict()
    for k, v in model.state_dict().items():
        if not k.startswith(owned) and (k not in got or not torch.equal(got[k], cast_floating(v, dtype))):
            raise ValueError(f"export check: tensor {k} reads back different")
    return len(mine)


def run(args) -> int:
    import torch

    from ..cli import UsageError
    from ..models import load_model
    from ..quant.export import export_compressed_tensors
    from .outputs import check_output, model_path, writing, written_directory

    out = args.output
    if os.path.isdir(out) and os.listdir(out) and not args.overwrite:
        raise UsageError(f"--output {out} is not empty (pass --overwrite to replace it)")
    check_output(out, {"--model": model_path(args.model)}, directory=True)
    t0 = time.perf_counter()
    print(f"loading {args.model} ...", flush=True)
    model, tok = load_model(args.model, dtype="auto")
    if not getattr(model, "pyquant_config", None):
        raise UsageError(f"--model {args.model} has no quantized layers: quantize it first (pyquant quantize)")
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    t1 = time.perf_counter()
    with writing(out):
        summary = export_compressed_tensors(model, out, tokenizer=tok, dtype=dtype, progress=True,
                                            max_shard_size=args.max_shard_size)
    t2 = time.perf_counter()
    for name, g in summary["config_groups"].items():
        w = g["weights"]
        what = f"int{w['num_bits']} " + (f"groups of {w['group_size']}" if w["group_size"] else "per channel")
        what += "" if w["symmetric"] else ", zero-points"
        act = ", int8 activations per token" if g["int8_activations"] else ""
        print(f"{name}: {g['layers']} layers, {g['format']} ({what}{act})")
    if summary["regrouped"]:
        (old, new), n = next(iter(summary["regrouped"].values())), len(summary["regrouped"])
        print(f"{n} layers written in groups of {new} (pyquant's {old}, whose last group is ragged in some "
              f"layers): the same weights, scales repeated")
    if len(summary["config_groups"]) > 1:
        print("note: several config groups; transformers' dequantizing loader applies one scheme to every dense "
              "layer, vLLM reads each layer's own")
    if any(getattr(m, "spec", None) is not None and m.spec.scale_dtype == "fp32" for m in model.modules()):
        print("note: fp32 scales; a server running fp16/bf16 may round them (an -fp16 scheme ships exact fp16 scales)")
    print(f"kept in full precision: {', '.join(summary['ignore']) or 'no linear layer'}")
    if not args.no_verify:
        n = _verify(model, out, dtype)
        print(f"verified: read back, the {n} quantized layers and every other tensor are identical")
    print(f"written: {written_directory(out)}")
    print(f"time: load {t1 - t0:.1f} s, export {t2 - t1:.1f} s, check {time.perf_counter() - t2:.1f} s")
    return 0
