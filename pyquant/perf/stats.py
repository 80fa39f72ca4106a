"""Summary statistics of latency samples.

Percentiles use *linear interpolation between closest ranks*, numpy's default
(``method="linear"``, Hyndman & Fan type 7): for sorted samples ``x[0..n-1]`` and
``q`` in [0, 100], ``h = (n - 1) * q / 100`` and ``P_q = x[floor(h)] + (h - floor(h)) *
(x[floor(h) + 1] - x[floor(h)])``. So P0 is the minimum, P100 the maximum, and P50 of an
even-sized sample is the mean of the two middle values. ``std`` is the population standard
deviation (ddof=0, numpy's default). Values keep the caller's unit (seconds for latencies).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

PERCENTILES = (50, 90, 95, 99)
SUMMARY_KEYS = ("n", "mean", "std", "min", "p50", "p90", "p95", "p99", "max")


def _clean(values: Iterable[float], what: str) -> list:
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError(f"{what}: no samples")
    bad = [v for v in xs if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{what}: {len(bad)} non-finite sample(s) (NaN/Inf), e.g. {bad[0]}")
    return xs


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (q in [0, 100]) of ``values`` by linear interpolation (see module doc).

    Returns a float in the unit of ``values``. ValueError on an empty sample, NaN/Inf, or q
    outside [0, 100].
    """
    if not (0.0 <= float(q) <= 100.0):
        raise ValueError(f"percentile q must be in [0, 100], got {q!r}")
    xs = sorted(_clean(values, "percentile"))
    h = (len(xs) - 1) * float(q) / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def summarize(values: Iterable[float], what: str = "samples") -> dict:
    """Summary of a sample: {"n", "mean", "std", "min", "p50", "p90", "p95", "p99", "max"}.

    All values except ``n`` are in the unit of ``values`` (seconds for latencies); ``std`` is
    the population standard deviation. ValueError (naming ``what``) on an empty sample or NaN/Inf.
    """
    xs = _clean(values, what)
    n = len(xs)
    mean = math.fsum(xs) / n
    var = math.fsum((v - mean) ** 2 for v in xs) / n
    out = {"n": n, "mean": mean, "std": math.sqrt(var), "min": min(xs)}
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(xs, q)
    out["max"] = max(xs)
    return out
