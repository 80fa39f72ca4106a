"""Benchmark: pyquant's CPU qmatmul vs torch's int4/int8 CPU kernels and fp32 matmul.

Decode (M=1, and a batch of M=4 rows) rotates over many distinct layers so the weights come
from memory, not cache; prefill (M=512) is compute-bound; the demo model's small layers (576 wide)
at M=1 show a call's fixed cost, through QuantLinear as a model calls them. Every row: median us per call, GB/s of
weight bytes read, fraction of this machine's measured read bandwidth (the best of a 512 MiB probe and of a plain
streaming read timed in the same rounds), fraction of that streaming read's median (decode: the
same-conditions yardstick), and the ratio to the best alternative timed in the same run
(candidates are timed interleaved, so the ratios survive a noisy machine). Each decode candidate
is timed after 10 ms of its own untimed sweeps (--warm-ms): a sweep straight after other work runs
slower for its first few milliseconds (after 16 fp32 GEMVs our INT4 kernel 1.3-1.5x, torch.sum
1.2x; after in-cache work or a sleep too; bench/RESULTS.md, thirty-third session), while the 512
MiB probe is timed warm, after its own reps. "pyquant a8" rows run
the same INT4 or INT8 weights as -a8 (x quantized to int8, integer dot products): a different scheme, so
the issue's targets are checked on the weight-only rows.

    .venv/bin/python bench/qmatmul.py [--quick] [--output bench/qmatmul.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import (Rotation, format_table, interleaved_medians, l3_bytes, layers_past_cache,  # noqa: E402
                     read_bandwidth, with_switch, write_json)

import pyquant as pq  # noqa: E402
from pyquant.formats import QuantizedWeight, QuantSpec, unpack_int4  # noqa: E402
from pyquant.ops import _native  # noqa: E402


def random_qweight(spec: QuantSpec, n: int, k: int, gen: torch.Generator) -> QuantizedWeight:
    """A QuantizedWeight with random codes/scales/zeros (quantizing random fp32 would be slower)."""
    if spec.bits == 8:
        q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
        return QuantizedWeight(spec, q, torch.rand(n, generator=gen) * 0.01 + 1e-3, None, (n, k))
    ng = spec.ngroups(k)
    q = torch.randint(0, 256, (n, ng * spec.group_size // 2), dtype=torch.uint8, generator=gen)
    z = None if spec.symmetric else torch.randint(0, 16, (n, ng), dtype=torch.uint8, generator=gen)
    return QuantizedWeight(spec, q, torch.rand(n, ng, generator=gen) * 0.01 + 1e-3, z, (n, k))


def torch_int4pack(qw: QuantizedWeight):
    """torch's CPU int4 format for the same codes: packed weight and [K/G, N, 2] scales+zeros.

    torch computes w = (code - 8) * scale + zero; ours is (code - z) * scale, so zero = (8 - z) * scale.
    """
    codes = unpack_int4(qw.qweight).to(torch.int32)
    packed = torch._convert_weight_to_int4pack_for_cpu(codes, 1)
    s = qw.scales.float()
    z = qw.zeros.float() if qw.zeros is not None else torch.full_like(s, 8.0)
    sz = torch.stack((s, (8.0 - z) * s), dim=-1).transpose(0, 1).contiguous()
    return packed, sz


def with_codes(mode: str, fn):
    """fn, run with the CPU kernels reading weight codes the ``mode`` way (then back to auto)."""
    return with_switch("codes", mode, fn)


def nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def run(args) -> dict:
    gen = torch.Generator().manual_seed(0)
    n = k = args.size
    L = args.layers
    g = args.group
    i4 = QuantSpec.parse(f"int4-g{g}")
    i8 = QuantSpec.parse("int8")
    i4a = QuantSpec.parse(f"int4-g{g}-a8")  # the same INT4 weights with int8 activations
    clock = time.process_time if args.cpu_time else time.perf_counter
    if args.bw_bytes is None:  # far past the last-level cache, whatever its size
        args.bw_bytes = max(512 << 20, 4 * l3_bytes())
    bw = read_bandwidth(args.bw_bytes, clock=clock)
    print(f"read bandwidth (best torch.sum over {args.bw_bytes >> 20} MiB, {torch.get_num_threads()} threads): "
          f"{bw / 1e9:.1f} GB/s; backend info: {pq.ops.backend_info()['qmatmul']['backends']['cpu']}")

    rows = []

    def add(group, name, res, wbytes, shape, is_ours):
        rows.append({"group": group, "backend": name, "shape": shape, "us": res["median_s"] * 1e6,
                     "min_us": res["min_s"] * 1e6, "gbps": wbytes / res["median_s"] / 1e9,
                     "best_gbps": wbytes / res["min_s"] / 1e9, "ours": is_ours})

    # ---------------- decode: M=1, rotating over at least L layers ----------------
    # Each format rotates over enough distinct layers to read 2x the last-level cache per sweep (at
    # least L): 16 INT4 4096x4096 layers are 136 MiB, past a 32 MiB L3 but not a 480 MiB one.
    # --quick (a smoke run): just L of each.
    past = (lambda layer_bytes: L) if args.quick else (lambda layer_bytes: layers_past_cache(layer_bytes, L))
    q4, q8 = Rotation([random_qweight(i4, n, k, gen)]), Rotation([random_qweight(i8, n, k, gen)])
    L4, L8, Lf = past(q4[0].nbytes), past(q8[0].nbytes), past(4 * n * k)
    sweep = max(L4, L8, Lf)  # calls per sweep; each candidate walks its own rotation (Rotation: index mod length)
    print(f"last-level cache {l3_bytes() >> 20} MiB: decode rotates over {L4} int4, {L8} int8, {Lf} fp32 layers")
    q4 += [random_qweight(i4, n, k, gen) for _ in range(L4 - 1)]
    q8 += [random_qweight(i8, n, k, gen) for _ in range(L8 - 1)]
    # the same INT4 weights as -a8: x quantized to int8, integer dot products (not the targets' rows)
    q4a = Rotation(dataclasses.replace(q, spec=i4a) for q in q4)
    q8a = Rotation(dataclasses.replace(q, spec=QuantSpec.parse("int8-a8")) for q in q8)  # likewise
    t4 = Rotation(torch_int4pack(q) for q in q4)
    wf = Rotation(torch.randn(n, k, generator=gen) for _ in range(Lf))
    x = torch.randn(1, k, generator=gen)
    xb = x.bfloat16()
    t4b = Rotation((p, sz.bfloat16()) for p, sz in t4)
    # A plain streaming read of as many bytes as one int4 layer's codes, timed in the same rounds:
    # the machine's read bandwidth under the same conditions as the kernels (the 512 MiB probe
    # above runs once, before them, and can catch a quieter or a busier moment).
    ones = Rotation(torch.ones(q.qweight.numel() // 4) for q in q4)
    s8b = Rotation(q.scales.bfloat16() for q in q8)
    rotation = f"x{L4}/{L8}/{Lf} layers"  # int4 / int8 / fp32
    shape = f"M=1 {n}x{k} {rotation}"
    # (group, name, fn, weight bytes read per call, ours?)
    cands = [
        ("decode int4", "pyquant cpu int4 (fp32 x)", lambda i: pq.ops.qmatmul(x, q4[i], backend="cpu"), q4[0].nbytes, True),
        ("decode int4", "pyquant cpu int4 (bf16 x)", lambda i: pq.ops.qmatmul(xb, q4[i], backend="cpu"), q4[0].nbytes, True),
        ("decode int4", "pyquant a8 cpu int4 (fp32 x)", lambda i: pq.ops.qmatmul(x, q4a[i], backend="cpu"), q4[0].nbytes, True),
        ("decode int4", "torch int4pack_mm (fp32 x)", lambda i: torch._weight_int4pack_mm_for_cpu(x, t4[i][0], g, t4[i][1]),
         nbytes(*t4[0]), False),
        ("decode int4", "torch int4pack_mm (bf16 x)", lambda i: torch._weight_int4pack_mm_for_cpu(xb, t4b[i][0], g, t4b[i][1]),
         nbytes(*t4b[0]), False),
        ("decode int8", "pyquant cpu int8 (fp32 x)", lambda i: pq.ops.qmatmul(x, q8[i], backend="cpu"), q8[0].nbytes, True),
        ("decode int8", "pyquant cpu int8 (bf16 x)", lambda i: pq.ops.qmatmul(xb, q8[i], backend="cpu"), q8[0].nbytes, True),
        ("decode int8", "pyquant a8 cpu int8 (fp32 x)", lambda i: pq.ops.qmatmul(x, q8a[i], backend="cpu"), q8[0].nbytes, True),
        ("decode int8", "torch int8pack_mm (fp32 x)", lambda i: torch._weight_int8pack_mm(x, q8[i].qweight, q8[i].scales),
         nbytes(q8[0].qweight, q8[0].scales), False),
        ("decode int8", "torch int8pack_mm (bf16 x)", lambda i: torch._weight_int8pack_mm(xb, q8[i].qweight, s8b[i]),
         nbytes(q8[0].qweight, s8b[0]), False),
        ("decode fp32", "torch fp32 x @ w.T", lambda i: x @ wf[i].T, nbytes(wf[0]), False),
        ("read", "stream read (torch.sum)", lambda i: ones[i].sum(), nbytes(ones[0]), False),
    ]
    # The code-reading mode this CPU does not default to, timed in the same rounds (see
    # csrc/cpu/qmatmul_kernels.h): the default's rows are the "pyquant cpu" ones.
    codes = _native.native().cpu_codes()
    other = "convert" if codes == "subnormal" else "subnormal"
    cands += [
        ("decode int4", f"({other} codes) cpu int4 (fp32 x)", with_codes(other, lambda i: pq.ops.qmatmul(x, q4[i], backend="cpu")),
         q4[0].nbytes, True),
        ("decode int8", f"({other} codes) cpu int8 (fp32 x)", with_codes(other, lambda i: pq.ops.qmatmul(x, q8[i], backend="cpu")),
         q8[0].nbytes, True),
    ]
    dec = interleaved_medians({c[1]: c[2] for c in cands}, sweep, rounds=args.rounds, warm_s=args.warm_ms / 1000,
                              clock=clock)
    for grp, name, _, wb, ours in cands:
        add(grp, name, dec[name], wb, shape, ours)

    # ---------------- batched decode: M=args.batch_m, rotating over the same layers ----------------
    if args.batch_m > 0:
        xm = torch.randn(args.batch_m, k, generator=gen)
        xmb = xm.bfloat16()
        bat = interleaved_medians({
            "pyquant cpu int4 (fp32 x)": lambda i: pq.ops.qmatmul(xm, q4[i], backend="cpu"),
            "pyquant cpu int4 (bf16 x)": lambda i: pq.ops.qmatmul(xmb, q4[i], backend="cpu"),
            "pyquant a8 cpu int4 (fp32 x)": lambda i: pq.ops.qmatmul(xm, q4a[i], backend="cpu"),
            "pyquant cpu int8 (fp32 x)": lambda i: pq.ops.qmatmul(xm, q8[i], backend="cpu"),
            "pyquant a8 cpu int8 (fp32 x)": lambda i: pq.ops.qmatmul(xm, q8a[i], backend="cpu"),
            "torch fp32 x @ w.T": lambda i: xm @ wf[i].T,
        }, sweep, rounds=args.rounds, warm_s=args.warm_ms / 1000, clock=clock)
        for name, wb in (("pyquant cpu int4 (fp32 x)", q4[0].nbytes), ("pyquant cpu int4 (bf16 x)", q4[0].nbytes),
                         ("pyquant a8 cpu int4 (fp32 x)", q4[0].nbytes),
                         ("pyquant cpu int8 (fp32 x)", q8[0].nbytes), ("pyquant a8 cpu int8 (fp32 x)", q8[0].nbytes),
                         ("torch fp32 x @ w.T", nbytes(wf[0]))):
            add("batch", name, bat[name], wb, f"M={args.batch_m} {n}x{k} {rotation}", name.startswith("pyquant"))
    del wf, t4, t4b, ones

    # ---------------- small layers: the demo model's shapes at M=1, called as a model calls them ----------------
    # x[1, 1, K] through QuantLinear modules (pq.ops.qmatmul) against F.linear on fp32 weights, over
    # 30 distinct layers (as many as the demo model's decoder layers). The quantized layers would
    # fit in L3, but the fp32 candidate's sweep evicts them, as a model's other layers would; at
    # these sizes a call's fixed cost shows. "kernel only" is the same call minus the Python
    # layers (pyquant._C's CpuWeight.matmul on DLPack capsules, the output allocated outside).
    if args.small_layers:
        from pyquant.quant.linear import QuantLinear
        from pyquant.ops.backends.qmatmul_cpu import _to_dlpack

        for sn, sk in ((576, 576), (192, 576), (1536, 576), (576, 1536)):
            ls = 30
            mods = [QuantLinear.from_quantized(random_qweight(i4, sn, sk, gen)) for _ in range(ls)]
            mods8 = [QuantLinear.from_quantized(random_qweight(i8, sn, sk, gen)) for _ in range(ls)]
            mods4a = [QuantLinear.from_quantized(QuantizedWeight(i4a, m.qweight, m.scales, m.zeros, (sn, sk))) for m in mods]
            wsf = [torch.randn(sn, sk, generator=gen) for _ in range(ls)]
            cw = [_native.native().CpuWeight(_to_dlpack(m.qweight), _to_dlpack(m.scales), _to_dlpack(m.zeros), 4, g, sk)
                  for m in mods]
            xs = torch.randn(1, 1, sk, generator=gen)
            ys = torch.empty(1, 1, sn)
            nt = torch.get_num_threads()
            with torch.inference_mode():
                sm = interleaved_medians({
                    "pyquant int4 QuantLinear": lambda i: mods[i](xs),
                    "pyquant int4 kernel only": lambda i: cw[i].matmul(_to_dlpack(xs), None, _to_dlpack(ys), nt),
                    "pyquant int8 QuantLinear": lambda i: mods8[i](xs),
                    "pyquant a8 int4 QuantLinear": lambda i: mods4a[i](xs),
                    "torch fp32 F.linear": lambda i: torch.nn.functional.linear(xs, wsf[i]),
                }, ls, rounds=args.rounds, clock=clock)
            for name, wb in (("pyquant int4 QuantLinear", mods[0].weight_nbytes), ("pyquant int4 kernel only", mods[0].weight_nbytes),
                             ("pyquant int8 QuantLinear", mods8[0].weight_nbytes),
                             ("pyquant a8 int4 QuantLinear", mods4a[0].weight_nbytes), ("torch fp32 F.linear", nbytes(wsf[0]))):
                add(f"small {sn}x{sk}", name, sm[name], wb, f"M=1 {sn}x{sk} x{ls} layers", name.startswith("pyquant"))
            del mods, mods8, mods4a, wsf, cw

    # ---------------- prefill: M=args.prefill_m ----------------
    m = args.prefill_m
    P = min(2, L)  # prefill rotates over the first P layers (as many as exist)
    xp = torch.randn(m, k, generator=gen)
    wfp = [torch.randn(n, k, generator=gen) for _ in range(P)]
    shape = f"M={m} {n}x{k}"
    pre_c = {
        "pyquant cpu int4": lambda i: pq.ops.qmatmul(xp, q4[i], backend="cpu"),
        "pyquant cpu int8": lambda i: pq.ops.qmatmul(xp, q8[i], backend="cpu"),
        # the same weights as -a8 (integer GEMM on AMX-INT8 tiles or AVX512-VNNI where the CPU has
        # them; not the targets' rows)
        "pyquant a8 cpu int4": lambda i: pq.ops.qmatmul(xp, q4a[i], backend="cpu"),
        "pyquant a8 cpu int8": lambda i: pq.ops.qmatmul(xp, q8a[i], backend="cpu"),
        "torch fp32 matmul": lambda i: torch.matmul(xp, wfp[i].T),
    }
    amx_on = _native.native().cpu_amx() == "on"
    if _native.native().cpu_vnni() == "on":  # and the same without it (nor AMX): fp32 kernels on x's q * s
        no_vnni = with_switch("vnni", "off", pre_c["pyquant a8 cpu int4"])
        pre_c["(no vnni) a8 cpu int4"] = with_switch("amx", "off", no_vnni) if amx_on else no_vnni
    if amx_on:  # and the GEMMs without AMX tiles (-a8: the VNNI GEMM where the CPU has it)
        for b in ("int4", "int8"):
            pre_c[f"(amx off) cpu {b}"] = with_switch("amx", "off", pre_c[f"pyquant cpu {b}"])
            pre_c[f"(amx off) a8 cpu {b}"] = with_switch("amx", "off", pre_c[f"pyquant a8 cpu {b}"])
    pre = interleaved_medians(pre_c, P, rounds=args.prefill_rounds, warmup=1, clock=clock)
    flops = 2.0 * m * n * k
    for name in pre:
        wb = {"int4": q4[0].nbytes, "int8": q8[0].nbytes}.get(name[-4:], nbytes(wfp[0]))
        add("prefill", name, pre[name], wb, shape, not name.startswith("torch"))
        rows[-1]["gflops"] = flops / pre[name]["median_s"] / 1e9
    # The same with bf16 x (a group of its own: not the targets' rows): AVX512-BF16 dot products
    # where the CPU has them, against torch's bf16 matmul and the fp32 GEMM on the same bf16 x.
    xpb, wfpb = xp.bfloat16(), [w.bfloat16() for w in wfp]
    preb_c = {
        "pyquant cpu int4 (bf16 x)": lambda i: pq.ops.qmatmul(xpb, q4[i], backend="cpu"),
        "pyquant cpu int8 (bf16 x)": lambda i: pq.ops.qmatmul(xpb, q8[i], backend="cpu"),
        "torch bf16 matmul": lambda i: torch.matmul(xpb, wfpb[i].T),
    }
    if _native.native().cpu_bf16_dot() == "on":  # the GEMM the other way than this CPU's default
        other = "off" if _native.native().cpu_bf16_gemm() == "on" else "on"
        alt = with_switch("bf16_gemm", other, preb_c["pyquant cpu int4 (bf16 x)"])
        if _native.native().cpu_amx() == "on":  # AMX takes the GEMM before either
            alt = with_switch("amx", "off", alt)
        preb_c[f"(bf16 gemm {other}) cpu int4 (bf16 x)"] = alt
    if _native.native().cpu_amx() == "on":
        preb_c["(amx off) cpu int4 (bf16 x)"] = with_switch("amx", "off", preb_c["pyquant cpu int4 (bf16 x)"])
    preb = interleaved_medians(preb_c, P, rounds=args.prefill_rounds, warmup=1, clock=clock)
    for name in preb:
        wb = {"int4": q4[0].nbytes, "int8": q8[0].nbytes}.get(name[-13:-9], nbytes(wfpb[0]))
        add("prefill bf16", name, preb[name], wb, shape, not name.startswith("torch"))
        rows[-1]["gflops"] = flops / preb[name]["median_s"] / 1e9

    # Read bandwidth: the best of the 512 MiB probe and the stream reads' best round (a probe that
    # caught a busy moment must not make a kernel look faster than memory); and the stream reads'
    # median, the same-conditions yardstick for the decode rows' medians.
    stream = next(r for r in rows if r["group"] == "read")
    peak = max(bw / 1e9, stream["best_gbps"]) * 1e9
    for r in rows:
        r["frac_bw"] = r["gbps"] * 1e9 / peak
        if r["group"].startswith("decode"):
            r["frac_stream"] = r["gbps"] / stream["gbps"]

    # ratio: the best alternative's median time over this row's (> 1: this row is faster)
    for r in rows:
        if r["group"] == "read":
            r["vs_best_alt"] = r["best_alt"] = None
            continue
        if r["group"].startswith("decode"):
            alts = [o for o in rows if o["group"].startswith("decode") and o["ours"] != r["ours"]
                    and (o["group"] == r["group"] or r["group"] == "decode fp32")]
        else:  # batched decode, prefill: the other side's rows of the same group
            alts = [o for o in rows if o["group"] == r["group"] and o["ours"] != r["ours"]]
        best = min(alts, key=lambda o: o["us"]) if alts else None
        r["vs_best_alt"] = best["us"] / r["us"] if best else None
        r["best_alt"] = best["backend"] if best else None

    def t(group, name):
        """Median us of the fastest row in ``group`` whose backend name starts with ``name``."""
        return min(r["us"] for r in rows if r["group"] == group and r["backend"].startswith(name))

    targets = [
        ("int4 decode vs torch int4pack_mm (>= 1.0)", t("decode int4", "torch int4pack_mm") / t("decode int4", "pyquant cpu int4"), 1.0),
        ("int4 decode fraction of read BW (>= 0.8)", max(r["frac_bw"] for r in rows if r["backend"].startswith("pyquant cpu int4") and r["group"] == "decode int4"), 0.8),
        ("int8 decode vs torch int8pack_mm (>= 1.0)", t("decode int8", "torch int8pack_mm") / t("decode int8", "pyquant cpu int8"), 1.0),
        ("int8 decode vs fp32 GEMV (>= 4)", t("decode fp32", "torch fp32 x @ w.T") / t("decode int8", "pyquant cpu int8"), 4.0),
        ("int4 decode vs fp32 GEMV (>= 8)", t("decode fp32", "torch fp32 x @ w.T") / t("decode int4", "pyquant cpu int4"), 8.0),
        ("int4 prefill vs fp32 matmul (>= 1.0)", t("prefill", "torch fp32 matmul") / t("prefill", "pyquant cpu int4"), 1.0),
        ("int8 prefill vs fp32 matmul (>= 1.0)", t("prefill", "torch fp32 matmul") / t("prefill", "pyquant cpu int8"), 1.0),
    ]
    # The host's memory can switch between a fast and a slow state (on this project's AMD EPYC VM:
    # 80-89 against 50-55 GB/s) between the probe and the rounds, or within them; the fraction of
    # the read bandwidth then compares rounds in one state with a yardstick from the other.
    state_changed = stream["gbps"] < 0.8 * peak / 1e9
    return {"read_bw_gbps": peak / 1e9, "read_bw_probe_gbps": bw / 1e9, "stream_read_median_gbps": stream["gbps"],
            "memory_state_changed": state_changed,
            "l3_bytes": l3_bytes(), "decode_layers": {"int4": L4, "int8": L8, "fp32": Lf}, "rows": rows,
            "targets": [{"target": a, "value": v, "goal": goal, "met": v >= goal} for a, v, goal in targets],
            "config": vars(args)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (1024x1024, M=64 prefill), fewer rounds")
    ap.add_argument("--size", type=int, default=4096, help="N = K of the weight (default 4096)")
    ap.add_argument("--layers", type=int, default=16,
                    help="distinct layers rotated through at decode, at least (default 16); each format gets as many "
                         "as it takes to read twice the last-level cache per sweep")
    ap.add_argument("--group", type=int, default=128, help="int4 group size (default 128)")
    ap.add_argument("--prefill-m", type=int, default=512)
    ap.add_argument("--batch-m", type=int, default=4,
                    help="M of the batched-decode rows (the decode kernels serve M <= 8, or <= 24 at K >= 1024, fewer off AMD CPUs and with AMX; 0: skip them)")
    ap.add_argument("--small-layers", type=int, default=1,
                    help="also time the demo model's layer shapes at M=1, per call (1, default) or not (0)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warm-ms", type=float, default=10.0,
                    help="decode: milliseconds of untimed sweeps of each candidate right before each of its timed "
                         "sweeps (default 10; 0: time each one straight after the candidate before it)")
    ap.add_argument("--prefill-rounds", type=int, default=5)
    ap.add_argument("--bw-bytes", type=int, default=None,
                    help="bytes the read-bandwidth probe sums (default: 512 MiB or 4x the last-level cache, the larger)")
    ap.add_argument("--threads", type=int, default=0, help="torch/OpenMP threads (default: torch's default)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with process CPU time instead of wall time (for an oversubscribed machine; "
                         "use with --threads 1, where it excludes the time this process was descheduled)")
    ap.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "qmatmul.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.prefill_m, args.rounds, args.prefill_rounds, args.bw_bytes = 1024, 64, 5, 3, 128 << 20
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    res = run(args)
    print("decode 'vs best alt': the fastest torch kernel of the same kind over this row (>1: pyquant is faster); "
          "torch rows: pyquant's fastest over them (<1: pyquant is faster)")
    cols = [("backend", "backend", "{}"), ("shape", "shape", "{}"), ("us", "us (median)", "{:.1f}"),
            ("gbps", "GB/s", "{:.1f}"), ("frac_bw", "of read BW", "{:.0%}"), ("frac_stream", "of stream", "{:.0%}"),
            ("gflops", "GFLOP/s", "{:.1f}"),
            ("vs_best_alt", "vs best alt", "{:.2f}x"), ("best_alt", "best alt", "{}")]
    print(f"read BW {res['read_bw_gbps']:.1f} GB/s: the best of the {args.bw_bytes >> 20} MiB probe "
          f"({res['read_bw_probe_gbps']:.1f}) and the stream read's best round; 'of stream': GB/s over the stream "
          f"read's median in the same rounds ({res['stream_read_median_gbps']:.1f} GB/s)")
    if res["memory_state_changed"]:
        print(f"NOTE: the stream read's median in the rounds ({res['stream_read_median_gbps']:.1f} GB/s) is under 80% "
              f"of the read BW ({res['read_bw_gbps']:.1f}): the machine's memory ran slower during the rounds than "
              "at its best, so 'of read BW' understates every row; 'of stream' compares like with like; rerun")
    print(format_table(res["rows"], cols))
    print()
    for tg in res["targets"]:
        print(f"{'MET ' if tg['met'] else 'MISS'}  {tg['target']}: {tg['value']:.2f}")
    write_json(args.output, res)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
