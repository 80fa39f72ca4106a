"""Pareto front, knee and verdict logic on hand-made points."""
import math
import random

import pytest

from pyquant.report.pareto import cheapest_passing, knee_point, pareto_front, verdict


def _brute_front(pts):
    return {i for i, (c, d) in enumerate(pts)
            if not any(c2 <= c and d2 <= d and (c2 < c or d2 < d) for c2, d2 in pts)}


def test_front_hand_made():
    # (cost, kl): C is dominated by B (cheaper and better); E dominated by D.
    pts = [(100, 0.0), (50, 0.002), (60, 0.003), (25, 0.03), (30, 0.05), (20, 0.2)]
    assert pareto_front(pts) == [5, 3, 1, 0]


def test_front_matches_brute_force_on_random_points():
    rng = random.Random(1234)
    for _ in range(50):
        pts = [(rng.randint(0, 10), rng.randint(0, 10)) for _ in range(rng.randint(1, 12))]
        front = pareto_front(pts)
        assert set(front) == _brute_front(pts)
        assert [pts[i][0] for i in front] == sorted(pts[i][0] for i in front)


def test_knee_is_the_bend():
    # Front: (0,1) -> (0.1,0.1) -> (1,0): the bend is at index 1; normalized distance to
    # the chord x+y=1 is 0.8/sqrt(2).
    pts = [(0.0, 1.0), (0.1, 0.1), (1.0, 0.0)]
    assert knee_point(pts) == 1
    # Scale invariance: bytes and nats on very different scales give the same knee.
    assert knee_point([(c * 1e9, d * 1e-3) for c, d in pts]) == 1
    # Two interior points: pick the farther from the chord.
    pts = [(0, 1.0), (0.3, 0.3), (0.5, 0.2), (1.0, 0.0)]
    # distances: (0.3,0.3)->0.4/sqrt2, (0.5,0.2)->0.3/sqrt2
    assert knee_point(pts) == 1


def test_no_knee_for_straight_or_concave_front_or_few_points():
    assert knee_point([(0, 1), (1, 0)]) is None
    assert knee_point([(0, 1.0), (0.5, 0.5), (1, 0.0)]) is None  # on the chord
    assert knee_point([(0, 1.0), (0.5, 0.8), (1, 0.0)]) is None  # above the chord
    assert knee_point([(5, 0.1)]) is None


def test_bad_points():
    with pytest.raises(ValueError, match="not finite"):
        pareto_front([(1, math.nan)])
    with pytest.raises(ValueError, match="cost, divergence"):
        pareto_front([(1, 2, 3)])


def test_verdict_and_cheapest():
    assert verdict(0.001, 0.007) == "pass"
    assert verdict(0.0069, 0.007, (0.005, 0.009)) == "borderline"
    assert verdict(0.0071, 0.007, (0.006, 0.008)) == "fail"
    assert verdict(None, 0.007) == "unknown"
    with pytest.raises(ValueError, match="max_kl"):
        verdict(0.1, -1)
    names = ["fp32", "int8", "int4"]
    assert cheapest_passing(names, [500, 130, 80], ["pass", "pass", "fail"]) == "int8"
    assert cheapest_passing(names, [500, None, 80], ["pass", "pass", "fail"]) == "fp32"
    assert cheapest_passing(names, [500, 130, 80], ["fail"] * 3) is None
    with pytest.raises(ValueError, match="same length"):
        cheapest_passing(names, [1], ["pass"])
