"""`pyquant reference`: collect a reference store (.pqref) from a model and a prompt set."""
from __future__ import annotations

import os

from . import add_model_argument

RESUMES = True  # finished batches are checkpointed in OUTPUT.partial/; a rerun resumes

HELP = "generate continuations with the reference model and store its top-N log-probs (.pqref)"
DESCRIPTION = HELP + """

The prompts file is read as JSONL, one {"prompt": ...} or {"messages": [...]} (rendered with the
chat template) per line, when its name ends in .jsonl or .json or its first non-empty line starts
with '{' (even a .txt file); else as plain text, one prompt per non-empty line.
Decoding is greedy unless --sample (then --temperature and --seed apply).
Interrupted runs resume: rerun the same command (finished batches are kept in OUTPUT.partial/).

example:
  pyquant reference --model demo --prompts prompts.jsonl --output ref.pqref --max-new-tokens 128
"""


_TEMPERATURE, _SEED = 1.0, 0


def add_arguments(p):
    add_model_argument(p)
    p.add_argument("--prompts", required=True,
                   help="prompts file: JSONL ({\"prompt\": ...} or {\"messages\": [...]} per line) when named .jsonl/.json "
                        "or its first non-empty line starts with '{', else one prompt per line")
    p.add_argument("--output", required=True, help="reference store to write (.pqref)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens generated per prompt (default 128)")
    p.add_argument("--top-n", type=int, default=16, help="log-probs stored per position (default 16)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per batch, also the checkpoint unit (default 8)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=_TEMPERATURE,
                   help=f"sampling temperature (only with --sample; default {_TEMPERATURE})")
    p.add_argument("--seed", type=int, default=_SEED, help=f"sampling seed (only with --sample; default {_SEED})")
    p.add_argument("--logprob-dtype", choices=("float32", "float16"), default="float32",
                   help="storage of the top-N log-probs (float16 halves their size)")


def run(args) -> int:
    from ..eval.collect import collect_reference
    from ..eval.progress import TokenProgress
    from ..eval.prompts import read_prompts
    from ..cli import UsageError
    from ..models import load_model
    from .outputs import check_output, model_path, writing

    if not args.sample:
        for flag, value, default in (("--temperature", args.temperature, _TEMPERATURE), ("--seed", args.seed, _SEED)):
            if value != default:
                raise UsageError(f"{flag} only applies with --sample (decoding is greedy without it)")
    check_output(args.output, {"--prompts": args.prompts, "--model": model_path(args.model)})
    prompts = read_prompts(args.prompts)
    model, tok = load_model(args.model, dtype=args.dtype)
    if tok is None:
        raise ValueError(f"{args.model} has no tokenizer: a reference needs one")
    with TokenProgress(len(prompts), "reference") as bar, writing(args.output):
        store = collect_reference(model, tok, prompts, max_new_tokens=args.max_new_tokens, top_n=args.top_n,
                                  sample=args.sample, seed=args.seed, temperature=args.temperature,
                                  batch_size=args.batch_size, logprob_dtype=args.logprob_dtype,
                                  output=args.output, progress=bar)
    gen = sum(len(s) - s.prompt_len for s in store)
    rows = [("sequences", f"{len(store)}"), ("tokens", f"{store.meta['num_tokens']}"),
            ("generated tokens", f"{gen}"), ("top-N", f"{store.top_n}"),
            ("bytes per token", f"{store.bytes_per_token:.1f}"),
            ("file size", f"{os.path.getsize(args.output) / 1e6:.3f} MB"),
            ("time", f"{bar.elapsed:.1f} s"), ("throughput", f"{bar.tokens_per_s:,.1f} tok/s (this run)")]
    print("\n".join(f"{k:18s} {v}" for k, v in rows))
    print(f"wrote {args.output}")
    return 0
