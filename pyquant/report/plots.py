"""Report figures (matplotlib, Agg canvas: no display, no global pyplot state).

Each ``plot_*`` function returns PNG bytes, or None when the results hold nothing to draw.
"""
from __future__ import annotations

import io
from typing import Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .pareto import knee_point, pareto_front

_DPI = 110
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def plot_tradeoff(names: Sequence[str], costs: Sequence[Optional[float]], kls: Sequence[Optional[float]],
                  *, cost_label: str, max_kl: Optional[float] = None) -> Optional[bytes]:
    """Quality (mean KL, y) versus one cost axis (x) scatter, with the Pareto front drawn, the
    knee marked and the --max-kl threshold as a dashed line. Variants missing either figure are
    left out. Returns PNG bytes, or None when no variant has both figures."""
    pts = [(n, c, k) for n, c, k in zip(names, costs, kls) if c is not None and k is not None]
    if not pts:
        return None
    xy = [(c, k) for _, c, k in pts]
    front = pareto_front(xy)
    knee = knee_point(xy, front)
    fig = Figure(figsize=(5.6, 4.0))
    ax = fig.add_subplot()
    for i, (n, c, k) in enumerate(pts):
        on_front = i in front
        ax.scatter([c], [k], s=60 if on_front else 40, color=_COLORS[i % len(_COLORS)],
                   edgecolors="black" if on_front else "none", zorder=3)
        ax.annotate(n, (c, k), textcoords="offset points", xytext=(6, 5 if i % 2 == 0 else -12), fontsize=8)
    if len(front) > 1:
        ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "-", color="0.4", lw=1.2,
                zorder=2, label="Pareto front")
    if knee is not None:
        ax.scatter([xy[knee][0]], [xy[knee][1]], marker="*", s=320, facecolors="none",
                   edgecolors="#d4a000", linewidths=1.8, zorder=4, label=f"knee: {pts[knee][0]}")
    if max_kl is not None:
        ax.axhline(max_kl, color="#d62728", ls="--", lw=1, label=f"max KL {max_kl:g}")
    ax.set_xlabel(cost_label)
    ax.set_ylabel("mean KL vs reference (nats/token)")
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.12)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


def plot_kl_by_position(curves: dict) -> Optional[bytes]:
    """Mean KL by token position, one line per variant, prefill and generation regions shaded.

    ``curves``: {variant: {"position": [...], "kl": [...], "boundary": float|None, "relative": bool}}
    (see report.load.kl_curve): positions relative to the prompt's end (negative = prefill) or
    absolute. Returns PNG bytes, or None when no curve is given."""
    curves = {n: c for n, c in curves.items() if c and len(c.get("position") or []) > 0}
    if not curves:
        return None
    fig = Figure(figsize=(5.6, 4.0))
    ax = fig.add_subplot()
    xmin = min(min(c["position"]) for c in curves.values())
    xmax = max(max(c["position"]) for c in curves.values())
    if xmax <= xmin:
        xmin, xmax = xmin - 0.5, xmax + 0.5
    relative = all(c.get("relative") for c in curves.values())
    boundaries = [c["boundary"] for c in curves.values() if c.get("boundary") is not None]
    if boundaries:
        b = min(max(sum(boundaries) / len(boundaries), xmin), xmax)
        ax.axvspan(xmin, b, color="#1f77b4", alpha=0.08, lw=0)
        ax.axvspan(b, xmax, color="#ff7f0e", alpha=0.08, lw=0)
        ax.axvline(b, color="0.3", lw=0.8, ls=":")
        ax.text(0.01, 0.97, "prefill (prompt)", transform=ax.transAxes, va="top", fontsize=8, color="#1f77b4")
        ax.text(0.99, 0.97, "generation", transform=ax.transAxes, va="top", ha="right", fontsize=8, color="#c05000")
    for i, (n, c) in enumerate(curves.items()):
        ax.plot(c["position"], c["kl"], "-", marker="." if len(c["position"]) < 20 else None, lw=1.3,
                color=_COLORS[i % len(_COLORS)], label=n)
    ax.set_xlabel("token position relative to the prompt's end" if relative
                  else "token position (boundary: median prompt length)")
    ax.set_ylabel("mean KL (nats/token)")
    ax.set_xlim(xmin, xmax)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(4, len(curves)), frameon=False)
    fig.tight_layout()
    return _png(fig)


def plot_kl_cdf(cdfs: dict, floor: float = 1e-6) -> Optional[bytes]:
    """Empirical CDF of per-token KL on a log x-axis, one line per variant.

    ``cdfs``: {variant: {"kl": [ascending], "fraction": [...], "tokens": n}} (report.load.kl_cdf).
    Values below ``floor`` (exact zeros included, which a log axis cannot show) are drawn at
    ``floor``. Returns PNG bytes, or None when there is nothing to draw."""
    cdfs = {n: c for n, c in cdfs.items() if c and c.get("kl")}
    if not cdfs:
        return None
    fig = Figure(figsize=(5.6, 4.0))
    ax = fig.add_subplot()
    for i, (n, c) in enumerate(cdfs.items()):
        xs = [max(float(x), floor) for x in c["kl"]]
        label = n + (f" ({c['tokens']} tok.)" if c.get("tokens") else "")
        ax.step(xs, c["fraction"], where="post", lw=1.4, color=_COLORS[i % len(_COLORS)], label=label)
    ax.set_xscale("log")
    ax.set_xlabel(f"per-token KL (nats, log scale; < {floor:g} drawn at {floor:g})")
    ax.set_ylabel("fraction of tokens ≤ x")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _png(fig)
