"""`pyquant tasks`: multiple-choice task accuracy, and flips against the reference model's answers."""
from __future__ import annotations

from . import add_model_argument, add_variant_argument

RESUMES = True  # scored items are checkpointed in OUTPUT.partial/; a rerun resumes

HELP = "multiple-choice task accuracy (lm-evaluation-harness acc / acc_norm) and flips versus a baseline"
DESCRIPTION = HELP + """

Each item is scored the lm-evaluation-harness way: the log-likelihood of " " + choice after the
context; the answer is the most likely choice (acc) or the most likely per character (acc_norm).
Accuracies come with Wilson 95% intervals. With --baseline (the tasks results of the
full-precision reference model on the same items), it also counts flips: items that exactly one of
the two answers correctly. A small accuracy change can hide many flips; McNemar's exact test says
whether the accuracy change itself is more than noise.

Task files are JSONL, one item per line:
  {"id": "q1", "task": "capitals", "context": "Question: ...\\nAnswer:", "choices": ["a", "b", "c"], "answer": 0}
"demo" is the bundled set (about 160 original questions in 5 small tasks). An interrupted run
resumes from OUTPUT.partial/.

example:
  pyquant tasks --model demo --output tasks-fp32.json
  pyquant tasks --model int4-dir --baseline tasks-fp32.json --output tasks-int4.json
  pyquant tasks --model my-hf-dir --tasks quiz.jsonl more.jsonl --limit 100 --output t.json
"""


def add_arguments(p):
    add_model_argument(p)
    p.add_argument("--tasks", nargs="+", default=["demo"], help="task files (JSONL), or 'demo' for the bundled set (default)")
    p.add_argument("--baseline", help="tasks results JSON of the reference model on the same items: adds flips")
    p.add_argument("--output", required=True, help="results JSON to write")
    p.add_argument("--batch-size", type=int, default=8, help="items per forward pass (default 8)")
    p.add_argument("--limit", type=int, help="score only the first N items")
    p.add_argument("--max-length", type=int, help="tokens the model sees per choice, cut from the left (default: its context length)")
    p.add_argument("--no-share-prefix", dest="share_prefix", action="store_false",
                   help="run every choice whole; by default the tokens an item's choices share (the context) run "
                        "once and their KV cache serves every choice (same scores to rounding), for the "
                        "architectures where that was checked (pyquant.eval.tasks.SHARED_PREFIX_MODEL_TYPES) and batches "
                        "that fit in the model's sliding window")
    add_variant_argument(p)


def _baseline(path: str):
    """(TaskResult, variant label) of a tasks results file."""
    from ..eval.tasks import TaskResult
    from ..results import read_results

    obj = read_results(path)
    if obj.get("kind") != "tasks":
        raise ValueError(f"{path} holds {obj.get('kind')!r} results, not tasks results: make it with `pyquant tasks`")
    if not obj.get("complete", True):
        raise ValueError(f"{path} is an incomplete run")
    return TaskResult.from_dict(obj.get("data")), str(obj.get("variant") or path)


def run(args) -> int:
    import shutil

    from ..eval.progress import TokenProgress
    from ..eval.tasks import evaluate_tasks, read_tasks
    from ..models import load_model
    from . import write_eval_results
    from .outputs import check_output, model_path, writing

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    check_output(args.output, {"--tasks": [t for t in args.tasks if t != "demo"], "--baseline": args.baseline,
                               "--model": model_path(args.model)})
    items = read_tasks(args.tasks)[: args.limit]
    base = label = None
    if args.baseline:
        base, label = _baseline(args.baseline)
        ids, base_ids = {it["id"] for it in items}, {it["id"] for it in base.items}
        if ids != base_ids:
            raise ValueError(f"{args.baseline} was scored on other items ({len(base_ids)} items, "
                             f"{len(ids & base_ids)} in common with these {len(ids)}): use the same --tasks and --limit")
    model, tok = load_model(args.model, dtype=args.dtype)
    if tok is None:
        raise ValueError(f"{args.model} has no tokenizer: task scoring needs one")
    ckpt = args.output + ".partial"
    with TokenProgress(len(items), "tasks", unit="item") as bar, writing(args.output):
        result = evaluate_tasks(model, tok, items, batch_size=args.batch_size, max_length=args.max_length,
                                checkpoint=ckpt, share_prefix=args.share_prefix, progress=bar)
    if base is not None:
        result.compare_with(base, label=label, path=args.baseline)
    data = result.to_dict()
    data["settings"]["files"] = list(args.tasks)
    write_eval_results(args, "tasks", data, model, tok, result, bar)
    shutil.rmtree(ckpt, ignore_errors=True)
    return 0
