"""Quality of RTN vs plain GPTQ vs attention-aware GPTQ (in three column orders) on the bundled
SmolLM2-135M, one run.

For each scheme: quantize fresh copies of the model with round-to-nearest ("rtn"), with GPTQ
taking X^T X for every linear ("gptq-plain": ``attention_aware=False``), with pyquant's default
GPTQ (value projections calibrated on the attention-mixed inputs A_h X, see
pyquant/quant/gptq.py; columns left to right: "gptq"), with that GPTQ taking the columns by
decreasing H diagonal, every group's grid fixed first ("gptq-static": ``act_order="static"``),
and in that order with groups contiguous in it ("gptq-act": ``act_order=True``, the layer
gathering its input); then
force each through the same reference (the built-in prompts, greedy) and report mean KL (all,
prefill, generation), top-1 agreement and the quantization time. GPTQ calibrates on the
built-in calibration text, which shares nothing with the prompts.

    python bench/gptq_quality.py                          # int4-g128, 24 prompts x 96 new tokens
    python bench/gptq_quality.py --schemes int4-g128,int8 --reference ref.pqref
    python bench/gptq_quality.py --methods gptq,gptq-static   # a subset (RTN always runs)
    python bench/gptq_quality.py --quick                  # 4 prompts, 16 tokens, 4 windows: a smoke run
Writes bench/gptq_quality.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--schemes", default="int4-g128", help="comma-separated schemes (default int4-g128)")
    p.add_argument("--reference", default=None, help="a .pqref of the demo model to reuse (default: collect one)")
    p.add_argument("--new-tokens", type=int, default=96)
    p.add_argument("--calib-seqs", type=int, default=32)
    p.add_argument("--calib-len", type=int, default=512)
    p.add_argument("--methods", default=None, help="comma-separated subset of the methods (default: all; rtn always)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "gptq_quality.json"))
    args = p.parse_args()
    import torch

    import pyquant as pq
    from pyquant import data
    from pyquant.eval.prompts import read_prompts

    prompts = read_prompts(data.prompts_path())
    if args.quick:
        prompts, args.new_tokens, args.calib_seqs, args.calib_len = prompts[:4], 16, 4, 128
    model, tok = pq.load_model("demo")
    if args.reference:
        store = pq.ReferenceStore.load(args.reference)
    else:
        t = time.perf_counter()
        store = pq.collect_reference(model, tok, prompts, max_new_tokens=args.new_tokens)
        print(f"reference: {len(store)} sequences, {store.num_rows} positions, {time.perf_counter() - t:.0f} s", flush=True)
    calib = pq.calibration_ids(tok, seq_len=args.calib_len, sequences=args.calib_seqs)
    methods = {"rtn": {}, "gptq-plain": {"method": "gptq", "calibration": calib, "attention_aware": False},
               "gptq": {"method": "gptq", "calibration": calib},
               "gptq-static": {"method": "gptq", "calibration": calib, "act_order": "static"},
               "gptq-act": {"method": "gptq", "calibration": calib, "act_order": True}}
    if args.methods:
        wanted = {"rtn", *(m.strip() for m in args.methods.split(","))}
        unknown = wanted - set(methods)
        if unknown:
            p.error(f"unknown --methods {sorted(unknown)}: choose from {list(methods)}")
        methods = {k: v for k, v in methods.items() if k in wanted}
    rows = []
    print(f"{'scheme':<12} {'method':<11} {'KL all':>8} {'prefill':>8} {'gen':>8} {'top-1':>7} {'quant s':>8}", flush=True)
    for scheme in [s.strip() for s in args.schemes.split(",") if s.strip()]:
        for name, kw in methods.items():
            t = time.perf_counter()
            q = pq.quantize_model(copy.deepcopy(model), scheme, progress=False, **kw)
            secs = time.perf_counter() - t
            st = pq.compare(q, store, tokenizer=tok).stats
            row = {"scheme": scheme, "method": name, "quantize_s": round(secs, 1),
                   **{f"kl_{k}": st[k]["kl_mean"] for k in ("all", "prefill", "generation")},
                   "top1_agree": st["all"]["top1_agree"]}
            rows.append(row)
            print(f"{scheme:<12} {name:<11} {row['kl_all']:8.4f} {row['kl_prefill']:8.4f} {row['kl_generation']:8.4f} "
                  f"{100 * row['top1_agree']:6.2f}% {secs:8.1f}", flush=True)
            del q
        base = next(r["kl_all"] for r in rows if r["scheme"] == scheme and r["method"] == "rtn")
        for r in rows:
            if r["scheme"] == scheme:
                r["kl_vs_rtn"] = r["kl_all"] / base
        print("  KL / RTN: " + ", ".join(f"{r['method']} {r['kl_vs_rtn']:.2f}x" for r in rows if r["scheme"] == scheme))
    meta = {"model": "SmolLM2-135M-Instruct (bundled GGUF, fp32)", "sequences": len(store), "positions": store.num_rows,
            "calibration": {"windows": len(calib), "tokens_per_window": args.calib_len}, "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads()}
    with open(args.output, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
