"""Shared benchmark helpers: interleaved median timing, read bandwidth, table and JSON output.

The machine may be shared and noisy, so candidates are timed *interleaved* (one sample of each per
round, rounds repeated) and compared by median: ratios measured side by side stay meaningful when
absolute numbers drift.
"""
from __future__ import annotations

import functools
import glob
import json
import math
import os
import platform
import statistics
import time
from typing import Callable, Dict

import torch


def time_sweep(fn: Callable[[int], object], n_items: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per item of one pass calling fn(0) .. fn(n_items - 1) (e.g. one call per layer).

    ``clock``: time.perf_counter (wall, default) or time.process_time (CPU seconds of all this
    process's threads: on an oversubscribed machine it leaves out the time spent descheduled).
    """
    t0 = clock()
    for i in range(n_items):
        fn(i)
    return (clock() - t0) / n_items


def sweeps_for(fn: Callable[[int], object], n_items: int, seconds: float,
               clock: Callable[[], float] = time.perf_counter) -> "list[float]":
    """time_sweep once, then again until ``seconds`` (wall) have passed since the first began: each
    sweep's seconds per item."""
    t_end = time.perf_counter() + seconds
    vals = [time_sweep(fn, n_items, clock)]
    while time.perf_counter() < t_end:
        vals.append(time_sweep(fn, n_items, clock))
    return vals


def round_order(n: int, r: int) -> "list[int]":
    """Round r's order of n candidates: row r mod n of a Williams design (a Latin square in which
    each candidate comes right after each other one exactly once), mirrored in rounds n to 2n - 1
    when n is odd (then balanced over 2n rounds)."""
    # 0, n-1, 1, n-2, 2, ...: steps -1, +2, -3, ... (mod n), all different when n is even
    first, lo, hi = [], 0, n - 1
    for j in range(n):
        if j % 2 == 0:
            first.append(lo)
            lo += 1
        else:
            first.append(hi)
            hi -= 1
    row = [(c + r) % n for c in first]
    return row[::-1] if n % 2 and (r // n) % 2 else row


def interleaved_medians(cands: Dict[str, Callable[[int], object]], n_items: int, rounds: int = 15,
                        warmup: int = 2, min_round_s: float = 0.0, warm_s: float = 0.0,
                        clock: Callable[[], float] = time.perf_counter) -> Dict[str, dict]:
    """Time every candidate over ``rounds`` rounds, one sweep of ``n_items`` calls each per round
    (the order of each round from round_order).

    Returns {name: {"median_s", "min_s", "samples"}} in seconds per call. ``warmup`` untimed sweeps
    of each candidate come first. With ``warm_s`` > 0, untimed sweeps of a candidate run right
    before each of its timed ones until warm_s seconds have passed (at least one), so each is timed
    after the same time of its own work, not in the wake of the candidate before it (see
    bench/qmatmul.py). A round repeats a candidate's sweep until ``min_round_s`` passes (so tiny
    calls are not dominated by timer resolution). ``clock`` as in time_sweep.
    """
    for fn in cands.values():
        for _ in range(warmup):
            time_sweep(fn, n_items, clock)
    samples = {k: [] for k in cands}
    names = list(cands)
    for r in range(rounds):
        # Round r runs the candidates in order round_order(n, r): each follows each other one
        # equally often, so none always runs right after the same one. (Rotating one fixed order
        # gave every candidate the same predecessor in every round: in bench/qmatmul.py the INT4
        # bf16-x row, always right after the fp32-x row on the same weights, ran 7-9% faster than
        # it on the same kernel; in this design the two agree within 1-4%.)
        for name in (names[i] for i in round_order(len(names), r)):
            fn = cands[name]
            if warm_s > 0:
                sweeps_for(fn, n_items, warm_s, clock)
            samples[name].append(statistics.median(sweeps_for(fn, n_items, min_round_s, clock)))
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "samples": v} for k, v in samples.items()}


@functools.lru_cache(maxsize=None)
def l3_bytes(default: int = 32 << 20) -> int:
    """This machine's last-level cache in bytes: the largest cache of cpu0 in Linux's sysfs (the whole
    socket's, shared with whatever else runs there), else ``default``."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    sizes = []
    for d in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(os.path.join(d, "size")) as f:
                text = f.read().strip()
            sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
        except (OSError, ValueError, IndexError):
            continue
    return max(sizes) if sizes else default


class Rotation(list):
    """A list indexed modulo its length: a sweep of any number of calls walks its items in turn."""

    def __getitem__(self, i):
        return list.__getitem__(self, i % len(self)) if isinstance(i, int) else list.__getitem__(self, i)


def layers_past_cache(layer_bytes: int, minimum: int, factor: float = 2.0) -> int:
    """How many distinct layers of ``layer_bytes`` each a rotation needs for a working set of at least
    ``factor`` times the last-level cache (l3_bytes), and at least ``minimum``: a memory-bound kernel's
    weights then come from memory, not cache."""
    return max(minimum, math.ceil(factor * l3_bytes() / layer_bytes))


def read_bandwidth(nbytes: int = 512 << 20, reps: int = 7, clock: Callable[[], float] = time.perf_counter) -> float:
    """This machine's read bandwidth in bytes/s: best of ``reps`` torch.sum over an fp32 array of
    ``nbytes`` (far larger than the last-level cache), with torch's threads; ``clock`` as in time_sweep."""
    a = torch.ones(nbytes // 4, dtype=torch.float32)
    a.sum()
    best = float("inf")
    for _ in range(reps):
        t0 = clock()
        a.sum()
        best = min(best, clock() - t0)
    return nbytes / best


def format_table(rows: list, columns: list) -> str:
    """A plain-text table: ``columns`` is a list of (key, header, format) over dict rows."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([("" if r.get(k) is None else fmt.format(r[k])) for k, _, fmt in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c[i].rjust(widths[i]) if i else c[i].ljust(widths[i]) for i in range(len(columns)))
             for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine_info() -> dict:
    """Where the numbers come from: CPU, threads, torch version, load average."""
    info = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    return info


def write_json(path: str, payload: dict) -> None:
    """Write ``payload`` (plus machine info and a timestamp) as indented JSON to ``path``."""
    payload = dict(payload)
    payload.setdefault("machine", machine_info())
    payload.setdefault("time_utc", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)


def with_switch(switch: str, mode: str, fn: Callable[[int], object]) -> Callable[[int], object]:
    """fn, run with pyquant's CPU kernels' process-wide ``switch`` (codes, bf16_dot, bf16_gemm, vnni, amx) set to
    ``mode`` (then back to auto)."""
    from pyquant.ops import _native
    setter = getattr(_native.native(), f"set_cpu_{switch}")

    def call(i):
        setter(mode)
        try:
            return fn(i)
        finally:
            setter("auto")
    return call
