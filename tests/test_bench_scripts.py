"""The benchmark scripts in bench/ run end to end at tiny sizes (so they cannot rot unseen).
Their timings are not checked here (timing assertions belong in the benchmarks); their structure
and the outputs that must agree between paths are."""
import itertools
import json
import os
import shutil
import subprocess
import sys

import pytest

from pyquant.ops import _native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_cpu = pytest.mark.skipif(_native.native() is None, reason="pyquant._C is not built")


def _run(args, timeout=300, env=None):
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 14])
def test_round_order_balances_predecessors(n):
    """Over a full cycle of rounds (n, or 2n when n is odd) every candidate runs once a round and
    comes right after each other one equally often: no candidate always follows the same one."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from _timing import round_order
    cycle = n if n % 2 == 0 else 2 * n
    follows = {}
    for r in range(cycle):
        order = round_order(n, r)
        assert sorted(order) == list(range(n))
        for a, b in zip(order, order[1:]):
            follows[a, b] = follows.get((a, b), 0) + 1
    assert set(follows) == {(a, b) for a in range(n) for b in range(n) if a != b}
    assert set(follows.values()) <= {cycle // n}


@pytest.mark.parametrize("warm_s", [0.0, 1e-6])
def test_interleaved_medians_warm_up_before_each_timed_sweep(warm_s):
    """With warm_s, each timed sweep comes right after untimed sweeps of the same candidate, so a
    cost paid only on the first call after another candidate stays out of the timings; without
    it, timed sweeps pay it."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import time
    from _timing import interleaved_medians
    log = []

    def cand(name):
        def call(i):
            if log and log[-1] != name:
                time.sleep(0.02)  # the wake of the other candidate
            log.append(name)
        return call

    res = interleaved_medians({"a": cand("a"), "b": cand("b")}, 1, rounds=4, warmup=0, warm_s=warm_s)
    assert all(len(r["samples"]) == 4 for r in res.values())
    if warm_s:
        assert all(max(r["samples"]) < 0.01 for r in res.values())
        runs = [len(list(g)) for _, g in itertools.groupby(log)]
        assert min(runs) >= 2  # every timed call right after a warm one of its own
    else:  # (a round's first candidate can be the one that ended the round before: no wake there)
        assert all(max(r["samples"]) >= 0.02 for r in res.values())
        assert len(log) == 8


@needs_cpu
def test_a8_vnni_bench_tiny(tmp_path):
    out = tmp_path / "a.json"
    args = [sys.executable, "bench/a8_vnni.py", "--m", "2,12", "--specs", "int4-g32-a8,int8-a8", "--size", "96",
            "--layers", "2", "--rounds", "1", "--output", str(out)]
    if _native.native().cpu_vnni() != "on":
        r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "AVX512-VNNI" in r.stderr
        return
    _run(args)
    rows = json.loads(out.read_text())["rows"]
    assert [(r["spec"], r["m"]) for r in rows] == [("int4-g32-a8", 2), ("int4-g32-a8", 12), ("int8-a8", 2), ("int8-a8", 12)]
    assert all(r["vnni_us"] > 0 and r["no_vnni_us"] > 0 for r in rows)
    amx = _native.native().cpu_amx() == "on"
    assert all((r.get("default_us", 0) > 0) == amx for r in rows)


@needs_cpu
def test_qmatmul_bench_tiny(tmp_path):
    out = tmp_path / "q.json"
    _run([sys.executable, "bench/qmatmul.py", "--quick", "--size", "256", "--layers", "2", "--prefill-m", "16",
          "--rounds", "2", "--prefill-rounds", "1", "--bw-bytes", str(16 << 20), "--output", str(out)])
    res = json.loads(out.read_text())
    names = {r["backend"] for r in res["rows"]}
    other = "convert" if _native.native().cpu_codes() == "subnormal" else "subnormal"
    assert {"pyquant cpu int4 (fp32 x)", "pyquant cpu int8 (fp32 x)", "torch fp32 x @ w.T",
            f"({other} codes) cpu int4 (fp32 x)", "pyquant cpu int4", "torch fp32 matmul", "stream read (torch.sum)",
            "pyquant a8 cpu int4 (fp32 x)", "pyquant a8 cpu int8 (fp32 x)"} <= names
    assert all(r["us"] > 0 for r in res["rows"]) and len(res["targets"]) == 7
    assert isinstance(res["memory_state_changed"], bool)
    if _native.native().cpu_amx() == "on":  # the prefill GEMMs with AMX off, side by side
        assert {f"(amx off) {a}cpu {b}" for a in ("", "a8 ") for b in ("int4", "int8")} <= names
    # the read bandwidth is never below the stream read's best round, and decode rows carry their
    # fraction of the stream read's median
    stream = next(r for r in res["rows"] if r["group"] == "read")
    assert res["read_bw_gbps"] >= stream["best_gbps"] - 1e-9 and res["read_bw_gbps"] >= res["read_bw_probe_gbps"] - 1e-9
    assert all(r["frac_stream"] > 0 for r in res["rows"] if r["group"].startswith("decode"))
    batch = {r["backend"]: r for r in res["rows"] if r["group"] == "batch"}
    assert set(batch) == {"pyquant cpu int4 (fp32 x)", "pyquant cpu int4 (bf16 x)", "pyquant a8 cpu int4 (fp32 x)",
                          "pyquant cpu int8 (fp32 x)", "pyquant a8 cpu int8 (fp32 x)", "torch fp32 x @ w.T"}
    assert batch["pyquant cpu int4 (fp32 x)"]["best_alt"] == "torch fp32 x @ w.T"
    small = [r for r in res["rows"] if r["group"].startswith("small ")]  # the demo model's shapes, per call
    assert {r["group"] for r in small} == {"small 576x576", "small 192x576", "small 1536x576", "small 576x1536"}
    assert {r["backend"] for r in small} == {"pyquant int4 QuantLinear", "pyquant int4 kernel only",
                                             "pyquant int8 QuantLinear", "pyquant a8 int4 QuantLinear",
                                             "torch fp32 F.linear"}
    assert all(r["best_alt"] == "torch fp32 F.linear" for r in small if r["ours"])


@needs_cpu
def test_stream_topn_bench_tiny(tmp_path):
    out = tmp_path / "s.json"
    _run([sys.executable, "bench/stream_topn.py", "--quick", "--shape", "64,32,1000", "--reps", "1", "--warmup", "0",
          "--paths", "materialized,stream,stream-capped", "--json", str(out)])
    rows = {r["path"]: r for r in json.loads(out.read_text())["rows"]}
    mat, stream = rows["materialized"], rows["stream"]
    assert mat["top1_ids_checksum"] == stream["top1_ids_checksum"]
    assert stream["kl_mean"] == pytest.approx(mat["kl_mean"], rel=1e-4, abs=1e-7)
    assert "error" not in rows["stream-capped"] and rows["stream-capped"]["kl_mean"] != stream["kl_mean"]


@needs_cpu
@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++")
def test_decode_ceiling_builds_and_runs(tmp_path):
    if _native.native().cpu_isa() == "scalar":
        pytest.skip("the loop needs AVX2 + FMA")
    exe = tmp_path / "decode_ceiling"
    _run(["g++", "-O2", "-mavx2", "-mfma", "-std=c++17", "bench/decode_ceiling.cpp", "-o", str(exe)])
    text = _run([str(exe)])
    lines = text.splitlines()[1:]
    rates = {ln.split()[0] + " " + ln.split()[1]: float(ln.split()[2]) for ln in lines if ln.startswith("int") and "tiles" not in ln}
    assert set(rates) == {"int4 convert", "int4 subnormal", "int4 subnormal-2chains", "int8 convert", "int8 subnormal"}
    tiles = {" ".join(ln.split()[:3]): float(ln.split()[3]) for ln in lines if ln.startswith("  ")}
    assert set(tiles) == {"1 x 4", "2 x 4", "3 x 4", "4 x 2"}
    assert all(v > 0 for v in [*rates.values(), *tiles.values()])
    # the measured FMA issue rate: no loop of one FMA lane a code can pass it (25% for noise)
    peak = float(next(ln for ln in lines if ln.startswith("fma peak (8 lanes)")).split()[4])
    assert all(v <= 1.25 * peak for v in [*rates.values(), *tiles.values()]), (peak, rates, tiles)


@needs_cpu
@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++")
def test_decode_ceiling_avx512_rows(tmp_path):
    """Built with AVX-512 flags it adds the 16-lane INT4 loop's rows (and the bf16 one with BF16)."""
    if _native.native().cpu_isa() != "avx512":
        pytest.skip("needs a CPU with AVX-512")
    flags = open("/proc/cpuinfo").read().split()
    bf16 = "avx512_bf16" in flags
    exe = tmp_path / "decode_ceiling512"
    _run(["g++", "-O2", "-mavx2", "-mfma", "-mavx512f", "-mavx512bw", *(["-mavx512bf16"] if bf16 else []),
          "-std=c++17", "bench/decode_ceiling.cpp", "-o", str(exe)])
    text = _run([str(exe)])
    head, body = text.split("avx512 int4")
    peak = float(body.split("FMA peak, ")[1].split(",")[0])
    assert peak >= 1.5 * float(head.split("fma peak (8 lanes)")[1].split()[0])  # 16 lanes against 8
    rows = body.splitlines()[1:]
    rates = {ln.split()[0]: float(ln.split()[1]) for ln in rows if ln.startswith("  ")}
    want = {"subnormal", "subnormal+fold", "subnormal+fold-2chains", "subnormal+fold-8rows", "convert+fold"}
    assert set(rates) == want | ({"bf16dot+fold"} if bf16 else set())
    assert all(v > 0 for v in rates.values())
    shares = {ln.split()[0]: float(ln.split()[2].strip("(,")) for ln in rows if ln.startswith("  ")}
    assert all(shares[k] == pytest.approx(rates[k] / peak, abs=0.006) for k in rates)
    assert all(rates[k] <= 1.25 * peak for k in want)  # one FMA lane a code (bf16 dot: two)


@needs_cpu
@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++")
def test_prefetch_probe_builds_and_runs(tmp_path):
    """bench/prefetch_probe.cpp: a row per schedule and prefetch placement, from memory and cached."""
    if _native.native().cpu_isa() != "avx512":
        pytest.skip("needs a CPU with AVX-512")
    exe = tmp_path / "prefetch_probe"
    _run(["g++", "-O2", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx2", "-mfma", "-std=c++17",
          "bench/prefetch_probe.cpp", "-o", str(exe)])
    text = _run([str(exe), "16"])
    rows = {" ".join(ln.split()[:2]): ln for ln in text.splitlines()[1:]}
    assert set(rows) == {f"{s} {p}" for s in ("static", "dyn16", "dyn64") for p in ("burst", "spread")}
    for ln in rows.values():
        rates = [float(w) for w in ln.split() if w.replace(".", "", 1).isdigit()]
        assert len(rates) == 2 and all(r > 0 for r in rates), ln
    assert subprocess.run([str(exe), "12"], capture_output=True).returncode == 2


@needs_cpu
@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++")
def test_layout_probe_builds_and_runs(tmp_path):
    """bench/layout_probe.cpp: a row per code layout and prefetch distance, each from memory (also
    as a ratio to the plain read timed in the same rounds) and cached; bad arguments exit 2."""
    if _native.native().cpu_isa() != "avx512":
        pytest.skip("needs a CPU with AVX-512")
    exe = tmp_path / "layout_probe"
    _run(["g++", "-O2", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx2", "-mfma", "-std=c++17",
          "bench/layout_probe.cpp", "-o", str(exe)])
    text = _run([str(exe), "16", "2"])
    rows = {ln.split(" from memory ")[0].strip(): ln for ln in text.splitlines()[1:]}
    assert set(rows) == {"plain read", "row-major 8K", "row-major 16K", "row-major none", "row-matched 8K",
                         "rows in turn 8K", "interleaved 8K", "interleaved none", "R4 ranges 8K", "R8 ranges 16K",
                         "R8 ranges 24K"}
    for name, ln in rows.items():
        nums = [float(w.rstrip("x")) for w in ln.split(" from memory ")[1].split()
                if w.rstrip("x").replace(".", "", 1).isdigit()]
        assert len(nums) == 3 and all(v > 0 for v in nums), ln
        assert name != "plain read" or nums[1] == 1.0, ln
    for bad in (["12"], ["16", "0"]):
        assert subprocess.run([str(exe), *bad], capture_output=True).returncode == 2


@needs_cpu
def test_decode_ab_against_head(tmp_path):
    """bench/decode_ab.sh builds HEAD's and the working tree's decode kernels into one program
    and times them interleaved; both compute the same products, so their outputs agree to
    rounding (bit for bit while the kernels are unchanged)."""
    if _native.native().cpu_isa() == "scalar":
        pytest.skip("the harness needs AVX2 + FMA")
    if subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    env = dict(os.environ, LAYERS="2", SIZE="136x256", ROUNDS="2")  # N x K
    text = _run(["bash", "bench/decode_ab.sh", "HEAD", "4", "1", "3"], env=env)
    heads = [line for line in text.splitlines() if line.startswith("int4 M=")]
    assert [h.split()[1] for h in heads] == ["M=1", "M=3"] and all(" 136x256 " in h for h in heads)
    for h in heads:
        diff = float(h.split("max |new - base| = ")[1].split()[0])
        ymax = float(h.split("(max |y| ")[1].rstrip(")"))
        assert ymax > 0 and 0.0 <= diff <= 1e-4 * ymax, h
    assert text.count("x base") == 2 and text.count("plain stream") == 2


@pytest.mark.slow
def test_gptq_quality_bench_quick_on_bundled_model(tmp_path):
    out = tmp_path / "g.json"
    _run([sys.executable, "bench/gptq_quality.py", "--quick", "--output", str(out)], timeout=1200)
    res = json.loads(out.read_text())
    assert [r["method"] for r in res["rows"]] == ["rtn", "gptq-plain", "gptq", "gptq-static", "gptq-act"]
    assert all(0 < r["kl_all"] < 5 and r["quantize_s"] > 0 for r in res["rows"])
    assert res["rows"][0]["kl_vs_rtn"] == 1.0 and res["meta"]["calibration"]["windows"] == 4


@needs_cpu
def test_moe_experts_bench_tiny():
    text = _run([sys.executable, "bench/moe_experts.py", "--hidden", "64", "--inter", "64", "--layers", "1",
                 "--experts", "4", "--tokens", "1,3", "--rounds", "1"])
    assert "weights: float32" in text and "int4-g128" in text
    assert len([ln for ln in text.splitlines() if ln.startswith("T=")]) == 2


def test_moe_experts_bench_llama4_tiny():
    text = _run([sys.executable, "bench/moe_experts.py", "--arch", "llama4", "--hidden", "64", "--inter", "64",
                 "--layers", "1", "--experts", "4", "--tokens", "1", "--rounds", "1"])
    diff = float(text.split("max |logit difference| ")[1].split()[0])
    assert diff < 1e-4 and "float32-routed" in text and "int8" in text


@pytest.mark.slow
def test_crosscheck_packers_against_autogptq_and_autoawq(tmp_path):
    """scripts/crosscheck_packers.py: weights packed by AutoGPTQ's and AutoAWQ's own code (sources
    downloaded from the package registry) read back exactly."""
    text = _run([sys.executable, "scripts/crosscheck_packers.py", "--dir", str(tmp_path)])
    assert text.count("= 0\n") == 7 and "all exact" in text
