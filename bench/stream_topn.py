"""Streaming top-N log-softmax vs the materialized PyTorch path, side by side in one run.

Paths (same inputs, same outputs: log-sum-exp, top-N, target and reference gathers, top-N KL):
  materialized  log_softmax(h @ W.T) + topk + gathers + KL (the [T, V] logits exist, twice)
  stream        pq.ops.stream_logprobs(..., backend="cpu"): tiled GEMM + C++ tile reducer
  stream-gemm   the same tile walk with a no-op reducer: the GEMM floor of the streaming path
  stream-capped (only with --paths) stream through an LMHead with a bias and a soft cap of 30 (Gemma 2's),
                the two steps applied to every logits tile

Each (path, shape) runs in a fresh subprocess. Time: median (and min) of --reps runs after
--warmup untimed runs (default 1). Memory: peak RSS minus the RSS after the inputs are allocated (the high-water mark is
reset through /proc/self/clear_refs just before the warm-up), so it counts every extra byte the
path touches: its tensors, allocator caches, BLAS and OpenMP scratch. GFLOP/s is 2*T*H*V / time;
"of peak" divides by the bare full GEMM (h @ W.T) timed in the materialized worker.

    python bench/stream_topn.py            # T=2048: H=576,V=49152 and H=4096,V=128256
    python bench/stream_topn.py --quick    # small shapes, for a smoke run
Writes bench/stream_topn.json. Timing helpers are local (bench/_timing.py did not exist yet).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

FULL_SHAPES = [(2048, 576, 49152), (2048, 4096, 128256)]
QUICK_SHAPES = [(256, 576, 8192), (256, 1024, 16384)]
PATHS = ("materialized", "stream", "stream-gemm")
EXTRA_PATHS = ("stream-capped",)
TOP_N = 16


# ---- worker (one path, one shape, fresh process) ------------------------------------------------

def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))


def _inputs(t, h, v, n):
    import torch

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(t, h, generator=g) / h ** 0.5 * 3
    weight = torch.randn(v, h, generator=g)
    targets = torch.randint(0, v, (t,), generator=g)
    ref_ids = (torch.randint(0, v, (t, 1), generator=g) + torch.arange(n) * 7919) % v  # distinct per row
    ref_lp = torch.log(torch.softmax(torch.randn(t, n, generator=g), -1) * 0.9).sort(-1, descending=True).values
    return hidden, weight, targets, ref_ids, ref_lp


def materialized(hidden, weight, targets, ref_ids, ref_lp, n, **_):
    """The issue's baseline: everything from the full [T, V] log-softmax."""
    import torch

    from pyquant.ops.stream import topn_statistics

    lp = torch.log_softmax(hidden @ weight.T, dim=-1)
    top_lp, top_ids = lp.topk(n, dim=-1)
    tgt = lp.gather(1, targets[:, None])[:, 0]
    cand = lp.gather(1, ref_ids)
    stats = topn_statistics(ref_lp, cand)
    return {"kl": stats["kl"], "top_ids": top_ids, "target": tgt}


def stream(hidden, weight, targets, ref_ids, ref_lp, n, vocab_tile=None, t_block=None):
    import pyquant as pq
    from pyquant.ops import stream_driver

    if t_block:
        stream_driver.DEFAULT_T_BLOCK = t_block
    o = pq.ops.stream_logprobs(hidden, weight, top_n=n, targets=targets, ref_ids=ref_ids, ref_logprobs=ref_lp,
                               vocab_tile=vocab_tile, backend="cpu")
    return {"kl": o.kl, "top_ids": o.top_ids, "target": o.target_logprobs}


def stream_capped(hidden, weight, targets, ref_ids, ref_lp, n, vocab_tile=None, t_block=None, bias=None):
    from pyquant.ops import LMHead

    return stream(hidden, LMHead(weight, bias, 30.0), targets, ref_ids, ref_lp, n, vocab_tile, t_block)


def stream_gemm(hidden, weight, targets, ref_ids, ref_lp, n, vocab_tile=None, t_block=None):
    from pyquant.ops import stream, stream_driver

    stream_driver.stream_topn(hidden, weight, n, targets, ref_ids, vocab_tile or stream.DEFAULT_VOCAB_TILE,
                              lambda *a: None, t_block=t_block)
    return None


def worker(path, t, h, v, n, reps, vocab_tile, t_block, threads, warmup) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    gemm_reps = max(1, min(2, reps))
    fn = {"materialized": materialized, "stream": stream, "stream-gemm": stream_gemm, "stream-capped": stream_capped}[path]
    inputs = _inputs(t, h, v, n)
    extra = {"bias": torch.randn(v, generator=torch.Generator().manual_seed(1))} if path == "stream-capped" else {}
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS high-water mark
    kw = dict(vocab_tile=vocab_tile, t_block=t_block, **extra) if path != "materialized" else {}
    out = None
    for _ in range(warmup):
        out = fn(*inputs, n, **kw)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn(*inputs, n, **kw)
        times.append(time.perf_counter() - t0)
    peak = _status_kib("VmHWM")
    res = {"path": path, "T": t, "H": h, "V": v, "N": n, "times_s": times, "warmup": warmup,
           "median_s": statistics.median(times), "min_s": min(times),
           "peak_extra_mib": (peak - base) / 1024, "threads": torch.get_num_threads()}
    if out is not None:
        res["kl_mean"] = float(out["kl"].mean())
        res["top1_ids_checksum"] = int(out["top_ids"][:, 0].sum())
        res["target_mean"] = float(out["target"].double().mean())
    if path == "materialized":  # the machine's GEMM ceiling for this shape
        hidden, weight = inputs[0], inputs[1]
        g = []
        for _ in range(gemm_reps):
            t0 = time.perf_counter()
            y = hidden @ weight.T
            g.append(time.perf_counter() - t0)
            del y
        res["bare_gemm_s"] = min(g)
    return res


# ---- driver: one subprocess per (path, shape), then the table -----------------------------------

def run_worker(path, shape, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", path, *map(str, shape), str(args.top_n), str(args.reps),
           str(args.vocab_tile or 0), str(args.t_block or 0), str(args.threads or 0), str(args.warmup)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if p.returncode != 0:
        return {"path": path, "T": shape[0], "H": shape[1], "V": shape[2], "error": p.stderr.strip()[-2000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def table(rows) -> str:
    head = f"{'T':>5} {'H':>5} {'V':>7} {'path':<13} {'median ms':>10} {'min ms':>9} {'GFLOP/s':>8} " \
           f"{'of peak':>7} {'vs mat.':>7} {'extra MiB':>9} {'kl mean':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['T']:>5} {r['H']:>5} {r['V']:>7} {r['path']:<13} ERROR {r['error'][-200:]}")
            continue
        lines.append(f"{r['T']:>5} {r['H']:>5} {r['V']:>7} {r['path']:<13} {r['median_s'] * 1e3:>10.1f} "
                     f"{r['min_s'] * 1e3:>9.1f} {r['gflops']:>8.1f} {r['of_peak']:>7.2f} {r['vs_materialized']:>6.2f}x "
                     f"{r['peak_extra_mib']:>9.1f} {r.get('kl_mean', float('nan')):>9.5f}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes (smoke run)")
    ap.add_argument("--reps", type=int, default=3, help="timed runs after one warm-up (default 3)")
    ap.add_argument("--top-n", type=int, default=TOP_N)
    ap.add_argument("--vocab-tile", type=int, default=None, help="stream vocabulary tile (default: the library's)")
    ap.add_argument("--t-block", type=int, default=None, help="stream token block (default: the library's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in every worker (default: torch's)")
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "stream_topn.json"))
    ap.add_argument("--timeout", type=int, default=900, help="seconds per worker")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones (default 1)")
    ap.add_argument("--shape", action="append", default=None, metavar="T,H,V", help="run this shape (repeatable)")
    ap.add_argument("--worker", nargs=10, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        path, *nums = args.worker
        t, h, v, n, reps, vt, tb, th, wu = map(int, nums)
        print(json.dumps(worker(path, t, h, v, n, reps, vt or None, tb or None, th or None, wu)))
        return
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    if args.shape:
        shapes = [tuple(int(x) for x in s.split(",")) for s in args.shape]
    paths = [p for p in args.paths.split(",") if p]
    for p in paths:
        if p not in PATHS + EXTRA_PATHS:
            raise SystemExit(f"unknown path {p!r}: choose from {PATHS + EXTRA_PATHS}")
    rows = []
    for shape in shapes:
        group = [run_worker(p, shape, args) for p in paths]
        mat = next((r for r in group if r["path"] == "materialized" and "error" not in r), None)
        t, h, v = shape
        for r in group:
            if "error" in r:
                continue
            r["gflops"] = 2 * t * h * v / r["median_s"] / 1e9
            r["of_peak"] = (mat["bare_gemm_s"] / r["median_s"]) if mat else float("nan")
            r["vs_materialized"] = (r["median_s"] / mat["median_s"]) if mat else float("nan")
        rows += group
        print(table(group), flush=True)
    print()
    print(table(rows))
    meta = {"load_average_at_end": os.getloadavg(), "warmup": args.warmup, "reps": args.reps,
            "cpu_count": os.cpu_count(), "top_n": args.top_n,
            "threads": args.threads, "vocab_tile": args.vocab_tile, "t_block": args.t_block,
            "memory_method": "peak RSS (VmHWM, reset via /proc/self/clear_refs) minus RSS after inputs, fresh process",
            "of_peak": "bare full GEMM h @ W.T time / path time"}
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
