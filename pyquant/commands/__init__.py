"""CLI subcommands, one module each (see pyquant/cli.py for the contract), and what the
evaluation subcommands (compare, perplexity) share: labelling a model and writing its results."""
from __future__ import annotations

import os


def variant_label(desc: dict, spec: str) -> str:
    """A short label for a model: its quantization spec, else its dtype ('float32'), else the path."""
    q = desc.get("quant") or {}
    return str(q.get("default_spec") or desc.get("dtype") or os.path.basename(str(spec).rstrip("/")))


def write_eval_results(args, kind: str, data: dict, model, tokenizer, result, bar) -> None:
    """Write ``data`` (plus the run's throughput from the progress ``bar``) as a ``kind`` results
    file to ``args.output``, labelled ``args.variant`` or the model's spec/dtype; print the
    result's table and the throughput."""
    from ..models import model_info
    from ..results import make_results, write_results

    info = model_info(model, tokenizer)
    data["throughput"] = {"seconds": bar.elapsed, "tokens_per_s": bar.tokens_per_s}
    write_results(args.output, make_results(kind, data, variant=args.variant or variant_label(info, args.model),
                                            model=info))
    print(result.table())
    print(f"{bar.tokens_per_s:,.1f} tok/s; wrote {args.output}")
