"""`pyquant compare`: force a candidate through a reference store and measure the divergence."""
from __future__ import annotations

from . import add_model_argument, add_variant_argument

HELP = "compare a candidate model with a reference store: KL, top-1 agreement, rejection, PPL ratio"
DESCRIPTION = HELP + """

The candidate is forced through the reference's own tokens (it never picks its own). Statistics
for all tokens, the prompt part (prefill) and the generated part (generation); --exact adds the
full-vocabulary KL against the live reference model.

example:
  pyquant compare --model int4-dir --reference ref.pqref --output compare-int4.json
  pyquant compare --model int8-dir --reference ref.pqref --exact --reference-model demo --output c.json
"""


def add_arguments(p):
    add_model_argument(p, "candidate")
    p.add_argument("--reference", required=True, help="reference store (.pqref) from `pyquant reference`")
    p.add_argument("--output", required=True, help="results JSON to write")
    p.add_argument("--exact", action="store_true", help="also the exact full-vocabulary KL (needs --reference-model)")
    p.add_argument("--reference-model", help="the live reference model (for --exact; as --model, loaded in --dtype)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    p.add_argument("--per-token", action="store_true", help="also write the per-token arrays to the JSON")
    add_variant_argument(p)


def run(args) -> int:
    from ..eval.compare import compare
    from ..eval.progress import TokenProgress
    from ..eval.store import ReferenceStore
    from ..models import load_model, tokenizer_fingerprint
    from . import write_eval_results
    from .outputs import check_output, model_path

    if args.exact and not args.reference_model:
        raise ValueError("--exact needs --reference-model")
    check_output(args.output, {"--reference": args.reference, "--model": model_path(args.model),
                               "--reference-model": model_path(args.reference_model)})
    store = ReferenceStore.load(args.reference)
    if len(store) == 0:
        raise ValueError(f"{args.reference} holds no sequences")
    model, tok = load_model(args.model, dtype=args.dtype)
    if tok is not None:
        store.check_tokenizer(tokenizer_fingerprint(tok))
    ref_model = load_model(args.reference_model, dtype=args.dtype)[0] if args.exact else None
    with TokenProgress(len(store), "compare") as bar:
        result = compare(model, store, tokenizer=tok, batch_size=args.batch_size, reference_model=ref_model,
                         exact=args.exact, progress=bar)
    write_eval_results(args, "compare", result.to_dict(per_token=args.per_token), model, tok, result, bar)
    return 0
