"""Plain-text tables of a benchmark result (BenchmarkResult.to_dict()) for stdout."""
from __future__ import annotations

MIB = 1024 * 1024


def _ms(stats, key):
    return "-" if not stats else f"{stats[key] * 1e3:.2f}"


def _num(x, fmt="{:.1f}"):
    return "-" if x is None else fmt.format(x)


def _grid(header, rows) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w[i]) for i, c in enumerate(r))  # noqa: E731
    return "\n".join([line(cells[0]), "  ".join("-" * x for x in w)] + [line(r) for r in cells[1:]])


def _peak(s) -> str:
    pm = s.get("peak_memory") or {}
    v = pm.get("peak_rss_bytes", pm.get("max_allocated_bytes"))
    return "error" if pm.get("error") else _num(None if v is None else v / MIB)


def format_tables(d: dict) -> str:
    """Three blocks: the setting, per-batch latency (ms) / throughput (tokens/s) / memory (MiB),
    and the batch sweep (decode tokens/s gain per doubling of the batch). Returns one string."""
    c = d["config"]
    w = d["memory"]["weights"]
    disk = d["memory"].get("disk") or {}
    head = (f"prompt {c['prompt_len']} + gen {c['gen_len']} tokens, {c['requests']} timed requests after "
            f"{c['warmup']} warm-up, device {c['device']}, {c['threads']} threads, {c['dtype']}\n"
            f"weights in memory {w['total'] / MIB:.1f} MiB ({w['quantized_layers']} quantized layers, "
            f"{w['quantized'] / MIB:.1f} MiB quantized)"
            + (f", on disk {disk['bytes'] / MIB:.1f} MiB" if "bytes" in disk else ""))
    rows = []
    for s in d["settings"]:
        if s["status"] != "ok":
            rows.append([s["batch"], s["error"][:60]] + [""] * 9)
            continue
        rows.append([s["batch"], _ms(s["ttft_s"], "p50"), _ms(s["ttft_s"], "p99"), _ms(s["tpot_s"], "p50"),
                     _ms(s["tpot_s"], "p99"), _ms(s["e2e_s"], "p50"), _num(s["prefill_tokens_per_s"]),
                     _num(s["decode_tokens_per_s"]), _num(s["output_tokens_per_s"]),
                     _num(s["kv_cache_bytes"] / MIB, "{:.2f}"), _peak(s)])
    lat = _grid(["batch", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms", "e2e p50 ms",
                 "prefill tok/s", "decode tok/s", "output tok/s", "KV MiB", "peak MiB"], rows)
    sw = d["sweep"]
    srows = [[r["batch"], _num(r[sw["metric"]]), f"{r['speedup_vs_first']:.2f}x",
              "-" if r["gain_per_doubling"] is None else f"{r['gain_per_doubling'] * 100:+.0f}%",
              "-" if r["pays"] is None else ("yes" if r["pays"] else "no")] for r in sw["rows"]]
    verdict = (f"batch stops paying at {sw['stops_paying_at']} (gain per doubling < {sw['threshold'] * 100:.0f}%)"
               if sw["stops_paying_at"] else "only one batch size measured: no sweep" if len(sw["rows"]) < 2
               else f"every measured doubling paid (>= {sw['threshold'] * 100:.0f}% per doubling)")
    sweep = _grid(["batch", "decode tok/s", "vs first", "gain/doubling", "pays"], srows)
    return "\n\n".join([head, lat, sweep, verdict])
