"""`pyquant bench`: latency percentiles, throughput and memory of a model over a batch sweep."""
from __future__ import annotations

import os

from . import add_model_argument, add_variant_argument

HELP = "measure TTFT/TPOT/end-to-end latency percentiles, tokens/s per batch size and memory"
DESCRIPTION = """\
Measure one model variant: per batch size, time to first token (prefill), time per output token
(every decode step), end-to-end latency (mean, std, min, P50/P90/P95/P99, max over the timed
requests after warm-up), prefill and decode tokens/s, KV-cache bytes and peak memory (CPU: peak
RSS of an isolated worker process per setting; CUDA: max allocated + NVML). Prompts are random
non-special tokens from a fixed seed, identical for every variant.

Nsight Systems (CUDA): only the timed region of each batch size is captured with
  nsys profile --capture-range=cudaProfilerApi --capture-range-end=stop \\
      pyquant bench --model M --device cuda --batch-sizes 8 --profile
(use --capture-range-end=repeat to get one report per batch size of a sweep).
On the CPU, --profile writes a torch.profiler chrome trace per batch size next to --output."""


def add_arguments(p):
    add_model_argument(p)
    p.add_argument("--quantize", metavar="SPEC", default=None,
                   help="quantize the loaded model in memory first (e.g. int8, int4-g128; lm_head kept)")
    add_variant_argument(p)
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--prompt-len", type=int, default=512, help="prompt tokens per sequence (default 512)")
    p.add_argument("--gen-len", type=int, default=128, help="output tokens per sequence (default 128)")
    p.add_argument("--requests", type=int, default=10, help="timed requests per batch size (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up requests per batch size (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="prompt seed (default 0)")
    p.add_argument("--profile", action="store_true",
                   help="CUDA: cudaProfilerStart/Stop around the timed region; CPU: write torch.profiler traces")
    p.add_argument("--no-peak-memory", action="store_true", help="skip the isolated peak-RSS worker (CPU)")
    p.add_argument("--output", default=None,
                   help="results JSON file to write (default: none; without --output nothing is saved, the table is "
                        "only printed; CPU --profile traces then go to ./pyquant-bench.bN.trace.json)")


def _batch_sizes(text: str) -> list:
    try:
        out = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        out = []
    if not out:
        from ..cli import UsageError

        raise UsageError(f"--batch-sizes must be comma-separated integers, got {text!r}")
    return out


def run(args) -> int:
    import pyquant as pq
    from ..models import model_description
    from ..perf.benchmark import check_options
    from . import variant_label
    from ..results import write_results
    from .outputs import check_output, model_path, writing

    bs = _batch_sizes(args.batch_sizes)
    check_options(bs, args.prompt_len, args.gen_len, args.requests, args.warmup, args.device, args.threads)
    spec = str(pq.QuantSpec.parse(args.quantize)) if args.quantize else None  # before the (slow) model load
    if args.output is not None:
        check_output(args.output, {"--model": model_path(args.model)})
    model, tokenizer = pq.load_model(args.model, dtype=args.dtype)
    if spec:
        model = pq.quantize_model(model, spec)
    variant = args.variant or variant_label(model_description(model), args.model)
    disk = args.model if os.path.exists(args.model) and not spec else True
    trace_prefix = os.path.splitext(args.output)[0] if args.output else None
    result = pq.benchmark(model, tokenizer, batch_sizes=bs, prompt_len=args.prompt_len, gen_len=args.gen_len,
                          requests=args.requests, warmup=args.warmup, device=args.device, threads=args.threads,
                          seed=args.seed, profile=args.profile, trace_prefix=trace_prefix,
                          peak_memory=not args.no_peak_memory, disk=disk)
    print(f"pyquant bench: {args.model} [{variant}]")
    print(result.table())
    if args.output:
        from ..models import model_info

        info = {**model_info(model, tokenizer, name=args.model), "quant_spec": spec}
        with writing(args.output):
            write_results(args.output, result.to_results(variant=variant, model=info))
        print(f"wrote {args.output}")
    for t in result.profile.get("traces", []):
        print(f"wrote profiler trace {t}")
    return 0
