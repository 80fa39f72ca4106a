"""GPU qmatmul benchmark: the cuda and triton backends against torch's fp16 matmul, same run.

Decode (M = 1..8) and prefill (M = 512) shapes. Each row rotates over enough distinct layers that
the weights come from HBM, not L2, and reports the median time per layer, the effective bandwidth
(bytes of packed weights + scales + zeros + x + y per second, in GB/s) and the speed-up over the
fp16 ``x @ w.T`` of the same shape. Prints a table and writes JSON (``--output``).
Without a CUDA device it prints why and exits 0.

    python bench/qmatmul_gpu.py [--shapes 4096x4096,4096x11008] [--specs int4-g128,int8] [--output FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch


def _sweep(fn, layers: int):
    for i in range(layers):
        fn(i)


def _time_ms(fn, layers: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean time of one call (ms), each repeat walking every layer once.

    The sweep is captured in a CUDA graph when possible, so Python dispatch (tens of us, more than
    a decode GEMV) is not timed; eager launches are the fallback.
    """
    _sweep(fn, layers)  # warm-up (and Triton compilation)
    torch.cuda.synchronize()
    run = lambda: _sweep(fn, layers)  # noqa: E731
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            _sweep(fn, layers)
        run = graph.replay
    except Exception as e:  # capture unsupported somewhere: time eager launches instead
        print(f"  (CUDA graph capture failed, timing eager launches: {e})")
    run()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / layers)
    return statistics.median(times)


def _layers_for(bytes_per_layer: int, l2_bytes: int) -> int:
    """Enough layers to read 4x the L2 per sweep (at least 16)."""
    return max(16, -(-4 * l2_bytes // max(bytes_per_layer, 1)))


def run(shapes, specs, ms, repeats: int = 20) -> list:
    """Benchmark rows: dicts with backend, spec, M, N, K, us, GB/s and ratio to fp16 torch."""
    import pyquant as pq
    from pyquant.quant.rtn import quantize_weight

    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    backends = [b for b in ("cuda", "triton") if b in pq.ops.available_backends("qmatmul", "cuda")]
    rows = []
    for n, k in shapes:
        w16_bytes = n * k * 2
        nl16 = _layers_for(w16_bytes, l2)
        w16 = [torch.randn(n, k, device="cuda", dtype=torch.float16) for _ in range(nl16)]
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            io = (m * k + m * n) * 2
            t16 = _time_ms(lambda i: x @ w16[i].T, nl16, repeats)
            rows.append(dict(backend="torch-fp16", spec="fp16", M=m, N=n, K=k, us=t16 * 1e3,
                             gbps=(w16_bytes + io) / t16 / 1e6, ratio=1.0))
            for spec in specs:
                q0 = quantize_weight(torch.randn(n, k, device="cuda"), spec)
                nl = _layers_for(q0.nbytes, l2)
                qws = [q0] + [quantize_weight(torch.randn(n, k, device="cuda"), spec) for _ in range(nl - 1)]
                for be in backends:
                    t = _time_ms(lambda i: pq.ops.qmatmul(x, qws[i], backend=be), nl, repeats)
                    rows.append(dict(backend=be, spec=spec, M=m, N=n, K=k, us=t * 1e3,
                                     gbps=(q0.nbytes + io) / t / 1e6, ratio=t16 / t))
                del qws
        del w16
        torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    """Parse arguments, run the benchmark (or say why not), print the table, write JSON; exit status 0."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008", help="NxK list")
    ap.add_argument("--specs", default="int4-g128,int4-g128-sym,int8")
    ap.add_argument("--ms", default="1,2,4,8,512", help="values of M (decode 1..8, prefill 512)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--output", default="bench/qmatmul_gpu.json")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/qmatmul_gpu.py: skipped: no CUDA device visible to torch")
        return 0
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    rows = run(shapes, a.specs.split(","), [int(v) for v in a.ms.split(",")], a.repeats)
    print(f"{'backend':<11} {'spec':<14} {'M':>4} {'N':>6} {'K':>6} {'us':>9} {'GB/s':>8} {'vs fp16':>8}")
    for r in rows:
        print(f"{r['backend']:<11} {r['spec']:<14} {r['M']:>4} {r['N']:>6} {r['K']:>6} {r['us']:>9.1f} "
              f"{r['gbps']:>8.1f} {r['ratio']:>7.2f}x")
    meta = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__)
    with open(a.output, "w") as f:
        json.dump(dict(version=1, meta=meta, rows=rows), f, indent=1)
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
