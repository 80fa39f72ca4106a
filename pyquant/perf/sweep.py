"""Batch-size sweep: where does a bigger batch stop paying?

For consecutive measured batch sizes b0 < b1 with decode throughputs T0, T1 (tokens/s), the
gain per doubling is ``(T1 / T0) ** (1 / log2(b1 / b0)) - 1`` (0.25 = +25 % tokens/s for each
doubling of the batch). The batch "stops paying" at the first b1 whose gain per doubling is
below ``threshold`` (default 10 %).
"""
from __future__ import annotations

import math

DEFAULT_THRESHOLD = 0.10


def batch_sweep(settings: list, key: str = "decode_tokens_per_s", threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Sweep table over the successful settings (dicts with "batch", "status" and ``key``).

    Returns {"metric": key, "threshold": threshold, "rows": [{"batch", key, "speedup_vs_first",
    "gain_per_doubling" (None for the first row), "pays" (None for the first row)}],
    "stops_paying_at": the first batch size that does not pay, or None}.
    """
    ok = sorted((s for s in settings if s.get("status") == "ok" and s.get(key)), key=lambda s: s["batch"])
    rows, stop = [], None
    for i, s in enumerate(ok):
        row = {"batch": s["batch"], key: s[key], "speedup_vs_first": s[key] / ok[0][key],
               "gain_per_doubling": None, "pays": None}
        if i:
            prev = ok[i - 1]
            gain = (s[key] / prev[key]) ** (1.0 / math.log2(s["batch"] / prev["batch"])) - 1.0
            row["gain_per_doubling"] = gain
            row["pays"] = gain >= threshold
            if stop is None and not row["pays"]:
                stop = s["batch"]
        rows.append(row)
    return {"metric": key, "threshold": threshold, "rows": rows, "stops_paying_at": stop}
