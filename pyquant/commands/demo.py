"""`pyquant demo`: the whole evaluation on the bundled SmolLM2-135M (see pyquant/demo.py)."""
from __future__ import annotations

RESUMES = True  # a rerun reuses the results files an interrupted run finished
HELP = "run the whole evaluation on the bundled SmolLM2-135M and write demo-output/report.html"
DESCRIPTION = HELP + """

Loads the model, collects a reference on the built-in prompts, quantizes INT8, INT4-g128 and
INT4-g32 with round-to-nearest and INT4-g128 with GPTQ (calibrated on the built-in calibration
text), compares each with the reference, measures perplexity on the
built-in text and benchmarks every variant, then writes the trade-off report (HTML, Markdown,
PNG plots) and the results files into --output-dir. Rerunning reuses finished results."""


def add_arguments(p):
    from ..demo import DEFAULT_VARIANTS

    p.add_argument("--output-dir", default="demo-output", help="where results and the report go (default: demo-output)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the pipeline in about a minute")
    p.add_argument("--model", default="demo", help="'demo' (bundled SmolLM2-135M), an HF model directory or a .gguf file")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help="comma-separated quantization schemes; append -gptq for GPTQ instead of round-to-nearest "
                        f"(default: {','.join(DEFAULT_VARIANTS)})")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is faster on a machine busy with other work)")
    p.add_argument("--max-kl", type=float, default=None, help="pass threshold on mean KL, nats/token (default 0.007)")


def run(args) -> int:
    from .outputs import check_output

    check_output(args.output_dir, flag="--output-dir", directory=True)
    from ..demo import run_demo

    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    if not variants:
        raise ValueError("--variants is empty")
    res = run_demo(args.output_dir, quick=args.quick, model=args.model, variants=variants, max_kl=args.max_kl,
                   threads=args.threads)
    return 0 if res["report"] else 1
