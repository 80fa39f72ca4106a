"""`pyquant perplexity`: lm-eval-compatible perplexity of text documents."""
from __future__ import annotations

from . import add_model_argument, add_variant_argument

HELP = "perplexity of text files (lm-evaluation-harness rolling windows, or strided): token, word, byte, bits/byte"
DESCRIPTION = HELP + """

Each file is one document, or a JSONL file with {"text": ...} per line. --mode rolling gives the
same log-likelihood as lm-evaluation-harness's loglikelihood_rolling with max_length=--context.

example:
  pyquant perplexity --model demo --texts wiki.txt --context 2048 --output ppl.json
  pyquant perplexity --model int4-dir --texts a.txt b.txt --mode strided --stride 512 --output ppl4.json
"""


def add_arguments(p):
    add_model_argument(p)
    p.add_argument("--texts", required=True, nargs="+", help="text files (one document each) or JSONL {\"text\": ...}")
    p.add_argument("--output", required=True, help="results JSON to write")
    p.add_argument("--context", type=int, default=2048, help="tokens per window (lm-eval's max_length; default 2048)")
    p.add_argument("--mode", choices=("rolling", "strided"), default="rolling", help="window scheme (default rolling)")
    p.add_argument("--stride", type=int, help="window step for --mode strided (default context/2)")
    p.add_argument("--batch-size", type=int, default=1, help="windows per forward pass (default 1)")
    add_variant_argument(p)


def run(args) -> int:
    from ..eval.perplexity import perplexity
    from ..eval.progress import TokenProgress
    from ..eval.prompts import read_texts
    from ..models import load_model
    from . import write_eval_results
    from .outputs import check_output, model_path

    check_output(args.output, {"--texts": args.texts, "--model": model_path(args.model)})
    texts = read_texts(args.texts)
    model, tok = load_model(args.model, dtype=args.dtype)
    if tok is None:
        raise ValueError(f"{args.model} has no tokenizer: perplexity needs one")
    with TokenProgress(None, "perplexity", unit="window") as bar:
        result = perplexity(model, tok, texts, context=args.context, mode=args.mode, stride=args.stride,
                            batch_size=args.batch_size, progress=bar)
    data = result.to_dict()
    data["settings"]["files"] = list(args.texts)
    write_eval_results(args, "perplexity", data, model, tok, result, bar)
    return 0
