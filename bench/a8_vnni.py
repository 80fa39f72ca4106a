"""Benchmark: -a8 matmuls (x quantized to int8) on AVX512-VNNI against the same calls without it.

With VNNI the CPU kernels multiply weight codes by int8 activations with vpdpbusd: the INT4 decode
tile (M <= 8, or <= 16 at K >= 1024; the same bits either way), the INT8 decode tile (M <= 8, 12 at
K >= 1024, 24 at K >= 4096) and, for more rows, an integer GEMM for INT4 and INT8 weights
(csrc/cpu/qmatmul_dot_prefill.h), where the fallback runs the fp32 kernels on x's q * s. Both run
with AMX off; on a CPU with AMX-INT8 a third column times the default, which takes -a8 past 8
rows (12 for INT8 at 1024 <= K < 4096, 56 for groups of 32) to AMX tiles (csrc/cpu/qmatmul_amx.h).
Each row times the ways interleaved (one sweep over the layers each per round, medians), so the ratio
survives a noisy machine; --layers distinct weights rotate so that at decode sizes they come from
memory. Needs a CPU with AVX512-VNNI (exits 2 elsewhere).

    .venv/bin/python bench/a8_vnni.py [--m 1,4,8,9,16,64,512] [--specs int4-g128-a8,int4-g32-a8,int8-a8]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import format_table, interleaved_medians, with_switch, write_json  # noqa: E402

import pyquant as pq  # noqa: E402
from pyquant.ops import _native  # noqa: E402
from pyquant.quant.rtn import quantize_weight  # noqa: E402


def run(args) -> dict:
    gen = torch.Generator().manual_seed(0)
    n = k = args.size
    rows = []
    for spec in args.specs.split(","):
        qws = [quantize_weight(torch.randn(n, k, generator=gen), spec) for _ in range(args.layers)]
        for m in (int(v) for v in args.m.split(",")):
            x = torch.randn(m, k, generator=gen)
            call = lambda i, x=x: pq.ops.qmatmul(x, qws[i], backend="cpu")  # noqa: E731
            base = with_switch("amx", "off", call) if args.amx else call
            cands = {"vnni": base, "no vnni": with_switch("vnni", "off", base)}
            if args.amx:
                cands["default"] = call
            res = interleaved_medians(cands, args.layers, rounds=args.rounds, warmup=1)
            on, off = res["vnni"]["median_s"], res["no vnni"]["median_s"]
            row = {"spec": spec, "shape": f"M={m} {n}x{k}", "m": m, "vnni_us": on * 1e6, "no_vnni_us": off * 1e6,
                   "speedup": off / on, "vnni_gmacs": m * n * k / on / 1e9}
            msg = f"{spec} M={m}: {on * 1e6:.0f} us with VNNI, {off * 1e6:.0f} us without, {off / on:.2f}x"
            if args.amx:
                d = res["default"]["median_s"]
                row.update(default_us=d * 1e6, default_vs_vnni=on / d)
                msg += f"; default (AMX past the decode rows) {d * 1e6:.0f} us, {on / d:.2f}x VNNI"
            rows.append(row)
            print(msg, flush=True)
    return {"rows": rows, "config": vars(args)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", default="1,4,8,9,16,64,512", help="rows of x, comma-separated")
    ap.add_argument("--specs", default="int4-g128-a8,int4-g32-a8,int8-a8", help="-a8 schemes, comma-separated")
    ap.add_argument("--size", type=int, default=4096, help="N = K of the weights (default 4096)")
    ap.add_argument("--layers", type=int, default=4, help="distinct weights rotated through (default 4)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "a8_vnni.json"))
    args = ap.parse_args(argv)
    native = _native.native()
    if native is None or native.cpu_vnni() != "on":
        print("needs pyquant._C on a CPU with AVX512-VNNI (cpu_vnni() is not 'on' here)", file=sys.stderr)
        return 2
    args.amx = native.cpu_amx() == "on"
    res = run(args)
    cols = [("spec", "scheme", "{}"), ("shape", "shape", "{}"), ("vnni_us", "VNNI us", "{:.0f}"),
            ("no_vnni_us", "without us", "{:.0f}"), ("speedup", "speedup", "{:.2f}x"),
            ("vnni_gmacs", "G MAC/s", "{:.1f}")]
    if args.amx:
        cols += [("default_us", "default us", "{:.0f}"), ("default_vs_vnni", "default vs VNNI", "{:.2f}x")]
    print(format_table(res["rows"], cols))
    write_json(args.output, res)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
