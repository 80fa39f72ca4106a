"""CLI subcommands, one module each (see pyquant/cli.py for the contract), and what they share:
the --model / --dtype / --variant arguments, labelling a model, writing evaluation results."""
from __future__ import annotations

import os


_SHORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}


def variant_label(desc: dict, spec: str) -> str:
    """A short label for a model (``desc``: ``model_description``/``model_info``), the one every
    command and the demo give by default: a quantized model's spec, "-gptq" when GPTQ made it, and
    its per-layer overrides (``int4-g128-gptq (*down_proj=int8)``), so that two different models
    do not share a label in a report; for a checkpoint another tool quantized, the path's last
    part and what it is (``Llama-GPTQ (gptq, int4-g128-fp16)``); else its dtype (``fp32``); else
    the path's last part."""
    q = desc.get("quant") or {}
    name = os.path.basename(str(spec).rstrip("/"))
    if str(q.get("method", "")).endswith("-checkpoint"):
        return f"{name} ({q['method'].rpartition('-')[0]}, {q.get('default_spec')})"
    if q.get("default_spec"):
        label = str(q["default_spec"]) + ("-gptq" if q.get("method") == "gptq" else "")
        over = q.get("overrides") or {}
        return label + (" (" + ", ".join(f"{p}={s}" for p, s in over.items()) + ")" if over else "")
    dtype = desc.get("dtype")
    return _SHORT_DTYPES.get(dtype, dtype) or name


MODEL_HELP = ("HF model directory (GPTQ, AWQ and compressed-tensors ones run on pyquant's kernels), pyquant quantized "
              "directory, .gguf file, or 'demo' (the bundled SmolLM2-135M)")


def add_model_argument(parser, role: str = "", dtype: bool = True) -> None:
    """--model (required), with what it accepts; ``role`` names the model's part (e.g. "candidate").
    With ``dtype``, also --dtype: what its full-precision weights and activations run in."""
    parser.add_argument("--model", required=True, help=(f"{role}: " if role else "") + MODEL_HELP)
    if dtype:
        parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16", "auto"),
                            help="dtype of the model's full-precision weights and of its activations (quantized "
                                 "layers keep their format); 'auto': as stored. bfloat16 holds those weights in 2 "
                                 "bytes instead of 4 (default float32)")


def add_variant_argument(parser) -> None:
    """--variant, the label a results file gives its model (see ``variant_label``)."""
    parser.add_argument("--variant", help="label of the model in results and reports (default: its quantization spec, "
                        "with -gptq and its overrides, e.g. 'int4-g128-gptq (*down_proj=int8)'; or its dtype, 'fp32')")


def write_eval_results(args, kind: str, data: dict, model, tokenizer, result, bar) -> None:
    """Write ``data`` (plus the run's throughput from the progress ``bar``) as a ``kind`` results
    file to ``args.output``, labelled ``args.variant`` or the model's spec/dtype; print the
    result's table and the throughput."""
    from ..models import model_info
    from ..results import make_results, write_results
    from .outputs import writing

    info = model_info(model, tokenizer)
    data["throughput"] = {"seconds": bar.elapsed, "tokens_per_s": bar.tokens_per_s}
    with writing(args.output):
        write_results(args.output, make_results(kind, data, variant=args.variant or variant_label(info, args.model),
                                                model=info))
    print(result.table())
    print(f"{bar.tokens_per_s:,.1f} tok/s; wrote {args.output}")
