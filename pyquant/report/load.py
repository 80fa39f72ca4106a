"""Read results files and merge them by variant into the figures the report shows.

The report layer reads results files only (pyquant/results.py), never models. Every figure is
looked up tolerantly: a results file that lacks a key gives ``None`` for that figure (shown as
"n/a"), never an error, so a report can be made from whatever subset of compare / perplexity /
bench / tasks runs exists.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Optional

from ..results import read_results

KINDS = ("compare", "perplexity", "bench", "tasks")


@dataclasses.dataclass
class Variant:
    """Everything measured for one model variant: the ``data`` of each results kind (or None)."""

    name: str
    compare: Optional[dict] = None
    perplexity: Optional[dict] = None
    bench: Optional[dict] = None
    tasks: Optional[dict] = None  # multiple-choice task accuracy and flips vs a baseline (pyquant tasks)
    model: dict = dataclasses.field(default_factory=dict)
    incomplete: list = dataclasses.field(default_factory=list)  # kinds whose file says complete=false
    sources: list = dataclasses.field(default_factory=list)  # paths whose data this variant shows
    # one note per results file dropped because a later file of the same kind has the same label:
    # "b.json replaces a.json (both compare results for 'int4-g128')"
    replaced: list = dataclasses.field(default_factory=list)


def _fingerprint(obj: dict) -> Optional[str]:
    """The weight fingerprint in a results file's "model", or None when it is missing (older files)."""
    model = obj.get("model")
    fp = model.get("fingerprint") if isinstance(model, dict) else None
    return str(fp) if fp else None


def load_variants(paths: Iterable[str]) -> list[Variant]:
    """Read results files and merge them by their ``variant`` label.

    Reads the kinds in KINDS (compare, perplexity, bench, tasks) into the Variant field of that name
    and returns the variants in order of first appearance. Files of kinds the report does not show
    (e.g. "reference") are skipped.

    Files sharing a label must measure the same model: when two of them carry weight fingerprints
    (``model.fingerprint``) that differ, ValueError names both paths (relabel one run with
    --variant). A file without a fingerprint (older results) merges with any. Two files of the same
    kind for the same variant: the later path wins, and ``Variant.replaced`` says so.
    Raises ValueError for a file that is not a pyquant results file or has no variant.
    """
    variants: dict[str, Variant] = {}
    fingerprints: dict[str, tuple] = {}  # label -> (fingerprint, the first path that had it)
    by_kind: dict[tuple, str] = {}  # (label, kind) -> the path whose data is kept
    paths = list(paths)
    if not paths:
        raise ValueError("no results files given")
    for path in dict.fromkeys(paths):  # a path given twice is read once
        obj = read_results(path)
        kind = obj.get("kind")
        if kind not in KINDS:
            continue
        name = str(obj.get("variant") or "").strip()
        if not name:
            raise ValueError(f"{path}: results file has no 'variant' label")
        fp = _fingerprint(obj)
        if fp is not None:
            known = fingerprints.setdefault(name, (fp, path))
            if known[0] != fp:
                raise ValueError(f"{name!r} labels two different models ({known[1]}, {path} have different "
                                 f"weight fingerprints): rerun one with --variant NAME")
        v = variants.setdefault(name, Variant(name))
        old = by_kind.get((name, kind))
        if old is not None:
            v.replaced.append(f"{path} replaces {old} (both {kind} results for {name!r})")
            v.sources.remove(old)
            if kind in v.incomplete:
                v.incomplete.remove(kind)
        by_kind[(name, kind)] = path
        setattr(v, kind, obj.get("data") or {})
        model = dict(obj.get("model") or {})
        if not v.model or (fp is not None and not v.model.get("fingerprint")):
            v.model = model  # the first model description, or the first one with a fingerprint
        v.sources.append(path)
        if not obj.get("complete", True):
            v.incomplete.append(kind)
    if not variants:
        raise ValueError(f"none of the {len(paths)} files holds {', '.join(KINDS[:-1])} or {KINDS[-1]} results")
    return list(variants.values())


def _num(x: Any) -> Optional[float]:
    """A finite float, or None."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _interval(x: Any) -> Optional[tuple]:
    """A (low, high) pair from [lo, hi] or {"low"/"lo", "high"/"hi"}, else None."""
    if isinstance(x, dict):
        x = (x.get("low", x.get("lo")), x.get("high", x.get("hi")))
    if isinstance(x, (list, tuple)) and len(x) == 2:
        lo, hi = _num(x[0]), _num(x[1])
        if lo is not None and hi is not None:
            return (lo, hi)
    return None


def _find(d: Any, *names: str) -> Any:
    """The first value found under any of ``names`` in d (searched depth-first), else None."""
    if isinstance(d, dict):
        for n in names:
            if n in d and d[n] is not None:
                return d[n]
        for v in d.values():
            r = _find(v, *names)
            if r is not None:
                return r
    return None


def compare_stats(v: Variant, part: str = "all") -> dict:
    """The compare statistics of one part ("all", "prefill", "generation"), or {}."""
    if not v.compare:
        return {}
    stats = v.compare.get("stats") or {}
    return stats.get(part) or {}


def quality_figures(v: Variant) -> dict:
    """Quality figures of a variant (all tokens); each None when not measured.

    Keys: kl_mean, kl_mean_ci95 (low, high), kl_p99, kl_max, top1_agree (fraction 0..1),
    top1_agree_ci95, reject_mean, ppl_ratio (candidate / reference), ppl_ref, ppl_cand,
    tokens (compared tokens), nonfinite (tokens with NaN/Inf, excluded), and from perplexity
    results: ppl_token, ppl_word, bits_per_byte.
    """
    s = compare_stats(v, "all")
    top1 = _num(s.get("top1_agree"))
    top1_ci = _interval(s.get("top1_agree_ci95"))
    if top1 is not None and top1 > 1.0 + 1e-9:  # given in percent
        top1 = top1 / 100.0
        top1_ci = (top1_ci[0] / 100.0, top1_ci[1] / 100.0) if top1_ci else None
    p = v.perplexity or {}
    total = p.get("total") if isinstance(p.get("total"), dict) else p
    return {
        "kl_mean": _num(s.get("kl_mean")),
        "kl_mean_ci95": _interval(s.get("kl_mean_ci95")),
        "kl_p99": _num(s.get("kl_p99")),
        "kl_max": _num(s.get("kl_max")),
        "top1_agree": top1,
        "top1_agree_ci95": top1_ci,
        "reject_mean": _num(s.get("reject_mean")),
        "ppl_ratio": _num(s.get("ppl_ratio")),
        "ppl_ref": _num(s.get("ppl_ref")),
        "ppl_cand": _num(s.get("ppl_cand")),
        "tokens": _num(s.get("tokens")),
        "nonfinite": _num(s.get("nonfinite")),
        "ppl_token": _num(_find(total, "token_perplexity")),
        "ppl_word": _num(_find(total, "word_perplexity")),
        "bits_per_byte": _num(_find(total, "bits_per_byte")),
    }


def _dict(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _count(x: Any) -> Optional[int]:
    n = _num(x)
    return None if n is None else int(n)


def task_figures(v: Variant) -> dict:
    """Task accuracy figures of a variant from its tasks results; each None when not measured.

    Reads data["summary"] = {"all": S, "<task>": S, ...} (S: n, nonfinite, acc, acc_ci95, acc_norm,
    acc_norm_ci95; accuracies as fractions 0..1) and data["flips"] = None or {"baseline": {"variant"},
    "acc": {"all": F, "<task>": F}, "acc_norm": {...}} (F: delta_acc, delta_acc_ci95,
    correct_to_wrong, wrong_to_correct, flip_rate, changed_rate, mcnemar_p, ...); flips are those
    judged by acc's predictions.

    Keys: acc, acc_ci95 (low, high), acc_norm, acc_norm_ci95, items (items scored), nonfinite
    (items left out), delta_acc (acc - baseline acc), delta_acc_ci95, correct_to_wrong,
    wrong_to_correct, flip_rate, changed_rate, mcnemar_p, baseline (the baseline's variant label),
    and per_task: {task: {"acc", "acc_ci95", "n", "flip_rate", "delta_acc"}} in file order.
    """
    d = _dict(v.tasks)
    summary, flips = _dict(d.get("summary")), _dict(d.get("flips"))
    per_flips = _dict(flips.get("acc"))
    s, f = _dict(summary.get("all")), _dict(per_flips.get("all"))
    baseline = _dict(flips.get("baseline")).get("variant")
    per_task = {}
    for name, st in summary.items():
        if name != "all":
            st, ft = _dict(st), _dict(per_flips.get(name))
            per_task[str(name)] = {"acc": _num(st.get("acc")), "acc_ci95": _interval(st.get("acc_ci95")),
                                   "n": _count(st.get("n")), "flip_rate": _num(ft.get("flip_rate")),
                                   "delta_acc": _num(ft.get("delta_acc"))}
    return {
        "acc": _num(s.get("acc")),
        "acc_ci95": _interval(s.get("acc_ci95")),
        "acc_norm": _num(s.get("acc_norm")),
        "acc_norm_ci95": _interval(s.get("acc_norm_ci95")),
        "items": _count(s.get("n")),
        "nonfinite": _count(s.get("nonfinite")),
        "delta_acc": _num(f.get("delta_acc")),
        "delta_acc_ci95": _interval(f.get("delta_acc_ci95")),
        "correct_to_wrong": _count(f.get("correct_to_wrong")),
        "wrong_to_correct": _count(f.get("wrong_to_correct")),
        "flip_rate": _num(f.get("flip_rate")),
        "changed_rate": _num(f.get("changed_rate")),
        "mcnemar_p": _num(f.get("mcnemar_p")),
        "baseline": str(baseline) if isinstance(baseline, (str, int, float)) and str(baseline) else None,
        "per_task": per_task,
    }


def _bench_settings(b: dict) -> list[dict]:
    """The per-batch-size settings of a bench result (a list of dicts with a batch size)."""
    for key in ("settings", "results", "runs"):
        s = b.get(key)
        if isinstance(s, list) and s and isinstance(s[0], dict):
            return s
        if isinstance(s, dict):  # {"1": {...}, "8": {...}}
            out = []
            for k, val in s.items():
                if isinstance(val, dict):
                    val = dict(val)
                    val.setdefault("batch_size", _num(k))
                    out.append(val)
            if out:
                return out
    return []


# peak runtime memory of one setting: CPU worker RSS (pq.benchmark), CUDA allocator peak
_PEAK_KEYS = ("peak_rss_bytes", "max_allocated_bytes", "peak_memory_bytes")


def _batch_of(setting: dict) -> Optional[int]:
    bs = _num(_find(setting, "batch_size", "batch"))
    return int(bs) if bs is not None else None


def _latency_ms(setting: dict, names: tuple, pct: str) -> Optional[float]:
    """A latency percentile in ms from {"ttft": {"p50": seconds}} or {"ttft_ms": {"p50": ms}} shapes."""
    for name in names:
        for suffix, scale in (("_ms", 1.0), ("_s", 1e3), ("", 1e3)):
            d = _find(setting, name + suffix)
            if isinstance(d, dict):
                val = _num(d.get(pct))
                if val is not None:
                    return val * scale
    return None


def cost_figures(v: Variant) -> dict:
    """Cost figures of a variant from its bench results; each None when not measured.

    Reads the ``pq.benchmark`` layout (pyquant/perf/benchmark.py): data["settings"] = [{"batch",
    "status", "ttft_s"/"tpot_s": {"p50", "p99", ...} in seconds, "decode_tokens_per_s",
    "peak_memory": {"peak_rss_bytes" | "max_allocated_bytes"}}], data["memory"] = {"weights":
    {"total"}, "disk": {"bytes"}}; settings whose status is not "ok" are skipped.

    Keys: weight_bytes (packed weights + scales + zeros, in memory), disk_bytes, peak_memory_bytes
    (peak runtime memory at batch 1 if known, else the largest over settings), ttft_p50_ms,
    ttft_p99_ms, tpot_p50_ms, tpot_p99_ms (at the smallest batch size measured), and
    tokens_per_s: {batch_size: decode tokens/s}.
    """
    b = v.bench or {}
    settings = sorted((s for s in _bench_settings(b) if _batch_of(s) is not None and s.get("status", "ok") == "ok"),
                      key=_batch_of)
    first = settings[0] if settings else b
    tps = {}
    for s in settings:
        val = _num(_find(s, "decode_tokens_per_s", "decode_tok_s", "tokens_per_s"))
        if val is not None:
            tps[_batch_of(s)] = val
    peak = _num(_find(first, *_PEAK_KEYS))
    if peak is None and settings:
        peaks = [_num(_find(s, *_PEAK_KEYS)) for s in settings]
        peaks = [p for p in peaks if p is not None]
        peak = max(peaks) if peaks else None
    mem = b.get("memory") if isinstance(b.get("memory"), dict) else {}
    weights, disk = mem.get("weights"), mem.get("disk")
    wbytes = _num(weights.get("total")) if isinstance(weights, dict) else _num(weights)
    dbytes = _num(disk.get("bytes")) if isinstance(disk, dict) else _num(disk)
    return {
        "weight_bytes": wbytes if wbytes is not None else _num(_find(mem, "weight_bytes")),
        "disk_bytes": dbytes if dbytes is not None else _num(_find(mem, "disk_bytes")),
        "peak_memory_bytes": peak,
        "ttft_p50_ms": _latency_ms(first, ("ttft",), "p50"),
        "ttft_p99_ms": _latency_ms(first, ("ttft",), "p99"),
        "tpot_p50_ms": _latency_ms(first, ("tpot",), "p50"),
        "tpot_p99_ms": _latency_ms(first, ("tpot",), "p99"),
        "tokens_per_s": tps,
    }


def kl_cdf(v: Variant, limit: int = 4000) -> Optional[dict]:
    """Empirical CDF of a variant's per-token KL: {"kl": [ascending], "fraction": [0..1], "tokens": n}.

    From the per-token KL when the results hold it (thinned evenly to at most ``limit`` points),
    else from the stored quantiles (``kl_quantiles`` = {"q": percent, "kl": values}, as written by
    pq.compare). None when neither exists. Non-finite values are left out."""
    if not v.compare:
        return None
    xs = (v.compare.get("per_token") or {}).get("kl")
    if isinstance(xs, list) and xs:
        vals = sorted(float(x) for x in xs if _num(x) is not None)
        m = len(vals)
        if not m:
            return None
        idx = range(m) if m <= limit else sorted({int(round(i * (m - 1) / (limit - 1))) for i in range(limit)})
        return {"kl": [vals[i] for i in idx], "fraction": [(i + 1) / m for i in idx], "tokens": m}
    q = v.compare.get("kl_quantiles")
    if isinstance(q, dict):
        qs, ks = q.get("q") or [], q.get("kl") or []
        pairs = [(float(a) / 100.0, float(b)) for a, b in zip(qs, ks) if _num(a) is not None and _num(b) is not None]
        if pairs:
            tokens = _num((compare_stats(v, "all") or {}).get("tokens"))
            return {"kl": [b for _, b in pairs], "fraction": [a for a, _ in pairs],
                    "tokens": int(tokens) if tokens is not None else None}
    return None


def _bucket_curve(rel_pos: list, kl: list, max_buckets: int = 64) -> dict:
    """Mean KL by relative position in equal-width integer buckets aligned at 0 (so no bucket mixes
    prefill and generation); position = bucket centre."""
    pairs = [(int(p), float(k)) for p, k in zip(rel_pos, kl) if _num(k) is not None]
    if not pairs:
        return {}
    lo, hi = min(p for p, _ in pairs), max(p for p, _ in pairs)
    width = max(1, math.ceil((hi - lo + 1) / max_buckets))
    sums: dict = {}
    for p, k in pairs:
        s = sums.setdefault(p // width, [0.0, 0])
        s[0] += k
        s[1] += 1
    keys = sorted(sums)
    return {"position": [b * width + (width - 1) / 2 for b in keys],
            "kl": [sums[b][0] / sums[b][1] for b in keys], "boundary": -0.5 if lo < 0 <= hi else None}


def kl_curve(v: Variant) -> Optional[dict]:
    """Mean KL by token position of a variant's compare run: {"position", "kl", "boundary", "relative"}.

    Preferred: from the per-token arrays (``per_token`` kl, seq, pos and ``sequences[i].prompt_len``,
    as pq.compare writes them), with positions relative to the end of each prompt (negative =
    prefill, boundary 0, relative True). Else from the stored curve (``curve.position`` =
    {"bucket_width", "bucket_start", "mean"}: absolute positions) with the boundary at the median
    prompt length. None when neither exists.
    """
    if not v.compare:
        return None
    d = v.compare
    seqs = d.get("sequences") if isinstance(d.get("sequences"), list) else []
    plens = [int(s["prompt_len"]) for s in seqs if isinstance(s, dict) and _num(s.get("prompt_len")) is not None]
    per = d.get("per_token") or {}
    kl, seq, pos = per.get("kl"), per.get("seq"), per.get("pos")
    if (isinstance(kl, list) and isinstance(seq, list) and isinstance(pos, list) and kl
            and len(kl) == len(seq) == len(pos) and len(plens) == len(seqs)):
        try:
            rel = [int(p) + 1 - plens[int(s)] for s, p in zip(seq, pos)]
        except (IndexError, TypeError, ValueError):
            rel = None
        if rel is not None:
            c = _bucket_curve(rel, kl)
            if c:
                c["relative"] = True
                return c
    curve = (d.get("curve") or {}).get("position") if isinstance(d.get("curve"), dict) else None
    if isinstance(curve, dict):
        starts, means = curve.get("bucket_start") or [], curve.get("mean") or []
        width = _num(curve.get("bucket_width")) or 1.0
        pairs = [(float(a) + (width - 1) / 2, float(b)) for a, b in zip(starts, means)
                 if _num(a) is not None and _num(b) is not None]
        if pairs:
            plens.sort()
            boundary = plens[len(plens) // 2] - 1.5 if plens else None  # rows t < prompt_len-1 are prefill
            return {"position": [p for p, _ in pairs], "kl": [k for _, k in pairs], "boundary": boundary,
                    "relative": False}
    return None
