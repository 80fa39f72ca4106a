"""Pareto front and knee of quality-versus-cost points, and the pass/fail verdict.

Both axes are "lower is better": cost (bytes, ms) and divergence (mean KL).

Pareto front: the points that no other point dominates (another point dominates p when it is
no worse on both axes and strictly better on at least one). Returned sorted by cost ascending
(so divergence descends along it).

Knee: the front's point of "most saving for least divergence". Normalize the front to the unit
square (cost and KL each divided by their range over the front, after subtracting the minimum),
draw the chord joining the front's two ends (cheapest, most accurate), and take the interior
point farthest from that chord on the origin side (the side that beats linear interpolation
between the ends). A front with fewer than 3 points, or one whose interior points all lie on or
above the chord, has no knee (None): no point buys more than a straight trade.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence


def _check(points: Sequence[tuple]) -> list[tuple]:
    out = []
    for i, p in enumerate(points):
        if len(p) != 2:
            raise ValueError(f"point {i} must be (cost, divergence), got {p!r}")
        c, d = float(p[0]), float(p[1])
        if not (math.isfinite(c) and math.isfinite(d)):
            raise ValueError(f"point {i} is not finite: {p!r}")
        out.append((c, d))
    return out


def pareto_front(points: Sequence[tuple]) -> list[int]:
    """Indices of the non-dominated (cost, divergence) points, sorted by cost ascending.

    Exact duplicates are all kept (neither dominates the other). Raises ValueError on
    non-finite or malformed points.
    """
    pts = _check(points)
    front = []
    for i, (ci, di) in enumerate(pts):
        dominated = any(
            (cj <= ci and dj <= di) and (cj < ci or dj < di) for j, (cj, dj) in enumerate(pts) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (pts[i][0], pts[i][1]))


def knee_point(points: Sequence[tuple], front: Optional[Sequence[int]] = None) -> Optional[int]:
    """Index of the knee of the front (see module docstring), or None when there is none.

    ``front`` defaults to ``pareto_front(points)``; it must be sorted by cost ascending.
    """
    pts = _check(points)
    if front is None:
        front = pareto_front(pts)
    if len(front) < 3:
        return None
    cs = [pts[i][0] for i in front]
    ds = [pts[i][1] for i in front]
    c0, c_span = min(cs), (max(cs) - min(cs))
    d0, d_span = min(ds), (max(ds) - min(ds))
    if c_span <= 0 or d_span <= 0:
        return None
    norm = [((c - c0) / c_span, (d - d0) / d_span) for c, d in zip(cs, ds)]
    (x1, y1), (x2, y2) = norm[0], norm[-1]
    # Signed distance from the chord; the origin side is where the cross product is positive
    # for a chord running from (0, 1) (cheapest, worst) to (1, 0) (dearest, best).
    length = math.hypot(x2 - x1, y2 - y1)
    best, best_dist = None, 1e-12
    for k in range(1, len(front) - 1):
        x, y = norm[k]
        dist = ((x2 - x1) * (y1 - y) - (x1 - x) * (y2 - y1)) / length
        if dist > best_dist:
            best, best_dist = front[k], dist
    return best


def verdict(kl_mean: Optional[float], max_kl: float, ci95: Optional[tuple] = None) -> str:
    """"pass", "fail", "borderline" (passes on the mean but the 95% interval crosses max_kl)
    or "unknown" (no KL measured). Raises ValueError on a negative or non-finite max_kl."""
    if not (math.isfinite(max_kl) and max_kl >= 0):
        raise ValueError(f"max_kl must be a finite number >= 0, got {max_kl!r}")
    if kl_mean is None:
        return "unknown"
    if kl_mean > max_kl:
        return "fail"
    if ci95 is not None and ci95[1] > max_kl:
        return "borderline"
    return "pass"


def cheapest_passing(names: Sequence[str], costs: Sequence[Optional[float]],
                     verdicts: Sequence[str]) -> Optional[str]:
    """The name with the lowest known cost among verdicts "pass" or "borderline", else None."""
    if not (len(names) == len(costs) == len(verdicts)):
        raise ValueError("names, costs and verdicts must have the same length")
    ok = [(c, n) for n, c, v in zip(names, costs, verdicts) if v in ("pass", "borderline") and c is not None]
    return min(ok)[1] if ok else None
