import math
import random

import numpy as np
import pytest

from pyquant.perf.stats import SUMMARY_KEYS, percentile, summarize


def test_percentile_hand_computed():
    xs = [10.0, 1.0, 4.0, 3.0]  # sorted: 1 3 4 10
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 100) == 10.0
    assert percentile(xs, 50) == 3.5  # h = 1.5 -> 3 + 0.5 * (4 - 3)
    assert percentile(xs, 90) == pytest.approx(8.2)  # h = 2.7 -> 4 + 0.7 * 6
    assert percentile(xs, 25) == pytest.approx(2.5)  # h = 0.75 -> 1 + 0.75 * 2
    assert percentile([7.0], 99) == 7.0


def test_percentile_matches_numpy_linear():
    rng = random.Random(1234)
    for n in (1, 2, 5, 17, 100):
        xs = [rng.expovariate(3.0) for _ in range(n)]
        for q in (0, 1, 50, 90, 95, 99, 99.9, 100):
            assert percentile(xs, q) == pytest.approx(float(np.percentile(np.array(xs, np.float64), q)), rel=1e-12, abs=0)


def test_summarize_hand_computed():
    s = summarize([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert tuple(s) == SUMMARY_KEYS
    assert s["n"] == 8 and s["mean"] == 5.0 and s["std"] == 2.0  # classic population-std example
    assert s["min"] == 2.0 and s["max"] == 9.0
    assert s["p50"] == 4.5  # h = 3.5 -> 4 + 0.5 * (5 - 4)
    assert s["p90"] == pytest.approx(7.6)  # h = 6.3 -> 7 + 0.3 * 2
    assert s["p99"] == pytest.approx(8.86)  # h = 6.93 -> 7 + 0.93 * 2
    assert s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]


def test_summarize_single_sample_has_zero_spread():
    s = summarize([0.25])
    assert s["std"] == 0.0 and all(s[k] == 0.25 for k in ("mean", "min", "p50", "p99", "max"))


@pytest.mark.parametrize("bad", [[], [1.0, math.nan], [math.inf]])
def test_bad_samples_raise(bad):
    with pytest.raises(ValueError):
        summarize(bad, "TTFT")


@pytest.mark.parametrize("q", [-1, 100.5])
def test_bad_q_raises(q):
    with pytest.raises(ValueError, match="percentile q"):
        percentile([1.0, 2.0], q)
