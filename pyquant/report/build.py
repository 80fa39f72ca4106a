"""Assemble a trade-off report from results files: tables, verdicts and figures, then write
the HTML page, its Markdown twin and the PNG figures.

Tables are built once here as rows of display strings; html.py and markdown.py only lay them out.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from typing import Callable, Optional

from . import plots
from .load import Variant, cost_figures, kl_cdf, kl_curve, load_variants, quality_figures, task_figures
from .pareto import cheapest_passing, knee_point, pareto_front, verdict

DEFAULT_MAX_KL = 0.007  # mean KL (nats/token): a commonly cited bar for a high-quality deployment

# The summary when no variant has a mean KL (no compare results): there is nothing to judge.
NO_KL_SUMMARY = "No divergence (compare) results given: no KL verdict."
NO_KL_IN_COMPARE_SUMMARY = "No mean KL in the compare results given: no KL verdict."

# Cost axes of the trade-off plots: (key, figure label, value in display units from cost figures).
COST_AXES: tuple = (
    ("latency", "time per output token, P50 at batch 1 (ms)", lambda c: c["tpot_p50_ms"]),
    ("memory", "weight memory (MiB)", lambda c: None if c["weight_bytes"] is None else c["weight_bytes"] / 2**20),
    ("peak", "peak runtime memory (MiB)", lambda c: None if c["peak_memory_bytes"] is None else c["peak_memory_bytes"] / 2**20),
)


@dataclasses.dataclass
class Figure:
    """One report figure: a file stem, a title, a caption and its PNG bytes."""

    stem: str
    title: str
    caption: str
    png: bytes


@dataclasses.dataclass
class Table:
    """A table of display strings."""

    title: str
    header: list
    rows: list
    note: str = ""


@dataclasses.dataclass
class Report:
    """Everything a renderer needs."""

    title: str
    created: str
    max_kl: float
    variants: list
    verdict_lines: list  # [(variant, verdict, sentence)]
    summary: str
    knee_line: str  # the knee of each cost axis's Pareto front, or "" when none
    tables: list
    figures: list
    sources: list
    notes: list = dataclasses.field(default_factory=list)  # results files replaced by later ones (Variant.replaced)


def _f(x: Optional[float], spec: str, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:{spec}}{unit}"


def _ci(x: Optional[tuple], spec: str, scale: float = 1.0) -> str:
    return "" if x is None else f" [{x[0] * scale:{spec}}, {x[1] * scale:{spec}}]"


def _mib(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x / 2**20:.1f}"


def _quality_table(variants, qual) -> Table:
    rows = []
    for v in variants:
        q = qual[v.name]
        top1 = "n/a" if q["top1_agree"] is None else f"{q['top1_agree'] * 100:.2f}%" + _ci(q["top1_agree_ci95"], ".2f", 100)
        rows.append([
            v.name + (" (incomplete)" if v.incomplete else ""),
            _f(q["kl_mean"], ".4g") + _ci(q["kl_mean_ci95"], ".3g"),
            _f(q["kl_p99"], ".4g"),
            top1,
            _f(q["reject_mean"], ".4g"),
            _f(q["ppl_ratio"], ".4f"),
            _f(q["ppl_token"], ".3f"),
            _f(q["bits_per_byte"], ".4f"),
            _f(q["tokens"], ".0f"),
        ])
    return Table("Quality (vs the full-precision reference)",
                 ["variant", "mean KL [95% CI]", "p99 KL", "top-1 agree [95% CI]", "reject (TV)",
                  "PPL ratio", "text PPL", "bits/byte", "tokens"], rows,
                 "KL in nats/token on the reference's own tokens (prefill + generation); intervals are "
                 "bootstrap 95% over sequences. PPL ratio = PPL(candidate)/PPL(reference) on the "
                 "reference's tokens. Text PPL and bits/byte: rolling-window perplexity of the text corpus.")


def _pct(x: Optional[float], ci: Optional[tuple] = None) -> str:
    """A fraction as percent with 2 decimals, and its interval in percent when given."""
    return "n/a" if x is None else f"{x * 100:.2f}%" + _ci(ci, ".2f", 100)


def _pp(x: Optional[float], ci: Optional[tuple] = None) -> str:
    """A difference of fractions as signed percentage points, and its interval when given."""
    return "n/a" if x is None else f"{x * 100:+.2f} pp" + _ci(ci, "+.2f", 100)


def _task_cell(p: Optional[dict]) -> str:
    """One task's accuracy, with its flip rate in parentheses when known."""
    if p is None:
        return "n/a"
    return _pct(p["acc"]) + ("" if p["flip_rate"] is None else f" ({_pct(p['flip_rate'])})")


def _task_tables(variants, tasks) -> list:
    """The "Task accuracy" table and, with more than one task, "Task accuracy by task"; [] when
    no variant has tasks results."""
    if not any(v.tasks for v in variants):
        return []
    baselines = sorted({t["baseline"] for t in tasks.values() if t["baseline"]})
    rows = []
    for v in variants:
        t = tasks[v.name]
        c2w, w2c = t["correct_to_wrong"], t["wrong_to_correct"]
        delta = ("baseline" if t["delta_acc"] is None and t["acc"] is not None and v.name in baselines
                 else _pp(t["delta_acc"], t["delta_acc_ci95"]))
        items = _f(t["items"], "d") + (f" (+{t['nonfinite']} non-finite left out)" if t["nonfinite"] else "")
        rows.append([v.name, _pct(t["acc"], t["acc_ci95"]), _pct(t["acc_norm"]), delta,
                     "n/a" if c2w is None or w2c is None else f"{c2w + w2c} ({c2w} / {w2c})",
                     _pct(t["flip_rate"]), _f(t["mcnemar_p"], ".3g"), items])
    out = [Table("Task accuracy",
                 ["variant", "accuracy [95% CI]", "acc_norm", "Δ acc vs baseline [95% CI]",
                  "flips (right→wrong / wrong→right)", "flip rate", "McNemar p", "items"], rows,
                 "Accuracy: lm-evaluation-harness multiple-choice accuracy (the choice with the highest summed "
                 "log-likelihood; acc_norm divides it by the choice's length in characters), over all tasks' "
                 "items pooled; 95% intervals are Wilson score intervals. Flips: items answered correctly by "
                 "exactly one of the baseline and the candidate (right→wrong: the candidate lost it), after "
                 "\"Accuracy is not all you need\" (Dutta et al., 2024): a small accuracy difference can hide "
                 "many flips. McNemar p: exact test of whether the accuracy difference itself is "
                 "distinguishable from noise." + (f" Baseline: {', '.join(baselines)}." if baselines else ""))]
    names = list(dict.fromkeys(k for t in tasks.values() for k in t["per_task"]))
    if len(names) > 1:
        rows = [[v.name] + [_task_cell(tasks[v.name]["per_task"].get(k)) for k in names] for v in variants]
        out.append(Table("Task accuracy by task", ["variant"] + names, rows,
                         "Accuracy per task (flip rate vs the baseline in parentheses)."))
    return out


def _task_clause(t: dict) -> str:
    """A short sentence on a variant's task accuracy for its verdict line, or "" without one."""
    if t["acc"] is None:
        return ""
    s = f" Task accuracy {t['acc'] * 100:.2f}%"
    vs = [] if t["delta_acc"] is None else [f"{_pp(t['delta_acc'])} vs {t['baseline'] or 'the baseline'}"]
    if t["flip_rate"] is not None:
        vs.append(f"{t['flip_rate'] * 100:.2f}% of answers flipped")
    return s + (f" ({', '.join(vs)})" if vs else "") + "."


def _cost_table(variants, cost) -> Table:
    rows = []
    for v in variants:
        c = cost[v.name]
        rows.append([v.name, _mib(c["weight_bytes"]), _mib(c["disk_bytes"]), _mib(c["peak_memory_bytes"]),
                     _f(c["ttft_p50_ms"], ".1f"), _f(c["ttft_p99_ms"], ".1f"),
                     _f(c["tpot_p50_ms"], ".2f"), _f(c["tpot_p99_ms"], ".2f")])
    return Table("Cost", ["variant", "weights (MiB)", "on disk (MiB)", "peak memory (MiB)",
                          "TTFT P50 (ms)", "TTFT P99 (ms)", "TPOT P50 (ms)", "TPOT P99 (ms)"], rows,
                 "Latencies at the smallest batch size measured: TTFT = time to first token (prefill), "
                 "TPOT = time per output token (each decode step).")


def _throughput_table(variants, cost) -> Optional[Table]:
    batches = sorted({b for v in variants for b in cost[v.name]["tokens_per_s"]})
    if not batches:
        return None
    rows = [[v.name] + [_f(cost[v.name]["tokens_per_s"].get(b), ".1f") for b in batches] for v in variants]
    return Table("Decode throughput (tokens/s)", ["variant"] + [f"batch {b}" for b in batches], rows)


def build_report(paths, max_kl: float = DEFAULT_MAX_KL, title: str = "pyquant trade-off report",
                 figures: bool = True) -> Report:
    """Read results files and compute every table, verdict and figure (unless ``figures=False``)
    of the report.

    Returns a Report. Raises ValueError on unreadable results files or a bad max_kl.
    """
    variants: list[Variant] = load_variants(paths)
    qual = {v.name: quality_figures(v) for v in variants}
    cost = {v.name: cost_figures(v) for v in variants}
    tasks = {v.name: task_figures(v) for v in variants}
    names = [v.name for v in variants]
    verdicts = [verdict(qual[n]["kl_mean"], max_kl, qual[n]["kl_mean_ci95"]) for n in names]

    lines = []
    for n, vd in zip(names, verdicts):
        q = qual[n]
        if vd == "unknown":
            s = f"{n}: no KL measured, no verdict."
        else:
            rel = "<=" if vd != "fail" else ">"
            s = f"{n}: mean KL {q['kl_mean']:.4g}{_ci(q['kl_mean_ci95'], '.3g')} {rel} {max_kl:g}"
            if vd == "borderline":
                s += " (the 95% interval reaches past the threshold: measure on more prompts)"
            s += "."
        lines.append((n, vd, s + _task_clause(tasks[n])))

    parts = []
    for key, label, get in COST_AXES:
        costs = [get(cost[n]) for n in names]
        best = cheapest_passing(names, costs, verdicts)
        if any(c is not None for c in costs):
            parts.append(f"by {label.split(' (')[0]}: {best or 'none passes'}")
    if all(vd == "unknown" for vd in verdicts):
        summary = NO_KL_SUMMARY if not any(v.compare for v in variants) else NO_KL_IN_COMPARE_SUMMARY
    elif not any(vd in ("pass", "borderline") for vd in verdicts):
        summary = f"No variant passes mean KL <= {max_kl:g}."
    elif parts:
        summary = f"Cheapest variant with mean KL <= {max_kl:g}: " + "; ".join(parts) + "."
    else:
        passing = [n for n, vd in zip(names, verdicts) if vd in ("pass", "borderline")]
        summary = f"Variants with mean KL <= {max_kl:g}: {', '.join(passing)} (no cost measured to rank them)."

    knees = []
    kls = [qual[n]["kl_mean"] for n in names]
    for key, label, get in COST_AXES:
        costs = [get(cost[n]) for n in names]
        pts = [(c, k) for c, k in zip(costs, kls) if c is not None and k is not None]
        pnames = [n for n, c, k in zip(names, costs, kls) if c is not None and k is not None]
        knee = knee_point(pts) if pts else None
        if knee is not None:
            knees.append(f"by {label.split(' (')[0]}: {pnames[knee]}")
    knee_line = ("Knee of the Pareto front (most saving for least divergence): " + "; ".join(knees) + ".") if knees else ""

    tables = [_quality_table(variants, qual), *_task_tables(variants, tasks), _cost_table(variants, cost)]
    tp = _throughput_table(variants, cost)
    if tp:
        tables.append(tp)

    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    sources = [p for v in variants for p in v.sources]
    notes = [n for v in variants for n in v.replaced]
    if not figures:
        return Report(title, created, max_kl, names, lines, summary, knee_line, tables, [], sources, notes)
    figures = []
    for key, label, get in COST_AXES:
        costs = [get(cost[n]) for n in names]
        png = plots.plot_tradeoff(names, costs, kls, cost_label=label, max_kl=max_kl)
        if png:
            pts = [(c, k) for c, k in zip(costs, kls) if c is not None and k is not None]
            pnames = [n for n, c, k in zip(names, costs, kls) if c is not None and k is not None]
            front = pareto_front(pts)
            knee = knee_point(pts, front)
            cap = (f"Mean KL against {label}. Pareto front: {', '.join(pnames[i] for i in front)}; "
                   f"knee: {pnames[knee] if knee is not None else 'none (fewer than 3 front points or no bend)'}.")
            figures.append(Figure(f"tradeoff_{key}", f"Quality vs {label.split(' (')[0]}", cap, png))
    png = plots.plot_kl_by_position({v.name: kl_curve(v) for v in variants})
    if png:
        figures.append(Figure("kl_by_position", "KL by position",
                              "Mean KL per position bucket; shaded: prompt (prefill) vs generated tokens. "
                              "Spikes in the prefill region at the prompt's start are common: the first tokens "
                              "have the least context.", png))
    png = plots.plot_kl_cdf({v.name: kl_cdf(v) for v in variants})
    if png:
        figures.append(Figure("kl_cdf", "Per-token KL distribution",
                              "Empirical CDF of per-token KL (log x-axis): curves further left are closer "
                              "to the reference; the right tail shows the rare tokens that diverge most.", png))
    return Report(title, created, max_kl, names, lines, summary, knee_line, tables, figures, sources, notes)


KNEE_DEFINITION = (
    "Pareto front: variants that no other variant beats on both mean KL and the cost axis. Knee: "
    "after scaling the front to the unit square, the interior front point farthest below the straight "
    "line joining the front's cheapest and most accurate ends, i.e. the point that buys the most saving "
    "for the least divergence compared with a straight trade; a front of fewer than 3 points has none.")


def write_report(paths, output: str, max_kl: float = DEFAULT_MAX_KL,
                 title: str = "pyquant trade-off report") -> dict:
    """Build the report and write ``output`` (HTML, self-contained), its Markdown twin (same stem,
    ``.md``) and one PNG per figure next to it. Returns {"html", "markdown", "figures": [paths],
    "report": Report}."""
    from .html import render_html
    from .markdown import render_markdown

    if not output.endswith((".html", ".htm")):
        raise ValueError(f"--output must be an .html file, got {output!r}")
    report = build_report(paths, max_kl=max_kl, title=title)
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(output))[0]
    fig_paths = []
    for fig in report.figures:
        p = os.path.join(out_dir, f"{stem}_{fig.stem}.png")
        with open(p, "wb") as f:
            f.write(fig.png)
        fig_paths.append(p)
    _write(output, render_html(report))
    md = os.path.join(out_dir, stem + ".md")
    _write(md, render_markdown(report, [os.path.basename(p) for p in fig_paths]))
    return {"html": output, "markdown": md, "figures": fig_paths, "report": report}


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def format_table_text(t: Table) -> str:
    """A plain-text (fixed-width) rendering of a table, for the terminal."""
    widths = [max(len(str(r[i])) for r in [t.header] + t.rows) for i in range(len(t.header))]
    fmt: Callable = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([fmt(t.header), fmt(["-" * w for w in widths])] + [fmt(r) for r in t.rows])
