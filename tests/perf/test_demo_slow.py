"""End to end on the bundled SmolLM2-135M (slow: `make test-slow`)."""
import pytest

import pyquant as pq

pytestmark = pytest.mark.slow


def test_demo_fp32_vs_int4_bench():
    results = {}
    for variant in ("fp32", "int4-g128"):
        model, tok = pq.load_model("demo")
        if variant != "fp32":
            model = pq.quantize_model(model, variant)
        results[variant] = r = pq.benchmark(model, tok, batch_sizes=(1, 2), prompt_len=32, gen_len=4, requests=2,
                                            warmup=1, threads=1, progress=False)
        assert r.config["context"] == model.config.max_position_embeddings
        for s in r.settings:
            assert s["status"] == "ok", s
            assert s["ttft_s"]["p50"] <= s["ttft_s"]["p99"] <= s["ttft_s"]["max"]
            assert s["tpot_s"]["n"] == 2 * 3
            assert s["kv_cache_bytes"] == s["kv_cache_bytes_formula"]
            assert "error" not in s["peak_memory"], s["peak_memory"]
            assert s["peak_memory"]["peak_rss_bytes"] > r.memory["weights"]["total"]
        assert "bytes" in r.memory["disk"], r.memory["disk"]
    fp, q4 = results["fp32"], results["int4-g128"]
    assert q4.memory["weights"]["total"] < 0.6 * fp.memory["weights"]["total"]
    assert q4.memory["disk"]["bytes"] < 0.6 * fp.memory["disk"]["bytes"]
    saved = fp.memory["weights"]["total"] - q4.memory["weights"]["total"]
    for a, b in zip(fp.settings, q4.settings):
        assert a["peak_memory"]["peak_rss_bytes"] - b["peak_memory"]["peak_rss_bytes"] > 0.5 * saved
