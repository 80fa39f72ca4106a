import json
import time
import types

import pytest
import torch

import pyquant as pq
from pyquant import nvtx
from pyquant.perf import benchmark as bm
from pyquant.perf.latency import allowed_token_ids, prompt_ids, run_request
from pyquant.perf.stats import SUMMARY_KEYS
from pyquant.results import read_results, write_results

OPTS = dict(prompt_len=12, gen_len=5, requests=3, warmup=1, threads=1, peak_memory=False, progress=False)


def _check_stats(s, n):
    assert tuple(s) == SUMMARY_KEYS and s["n"] == n
    assert 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]
    assert s["min"] <= s["mean"] <= s["max"] and s["std"] >= 0


def test_end_to_end_fields_consistent(tiny_model, tmp_path):
    r = pq.benchmark(tiny_model, None, batch_sizes=(2, 1), disk=True, **OPTS)
    L, G, R = OPTS["prompt_len"], OPTS["gen_len"], OPTS["requests"]
    assert [s["batch"] for s in r.settings] == [1, 2]
    for s in r.settings:
        b = s["batch"]
        assert s["status"] == "ok" and s["error"] is None
        _check_stats(s["ttft_s"], R)
        _check_stats(s["tpot_s"], R * (G - 1))
        _check_stats(s["e2e_s"], R)
        assert s["prefill_tokens"] == b * L * R and s["decode_tokens"] == b * (G - 1) * R
        assert s["output_tokens"] == b * G * R
        assert s["prefill_time_s"] == pytest.approx(s["ttft_s"]["mean"] * R)
        assert s["decode_time_s"] == pytest.approx(s["tpot_s"]["mean"] * R * (G - 1))
        # a request's end-to-end time is its prefill plus its decode steps
        assert s["e2e_time_s"] == pytest.approx(s["prefill_time_s"] + s["decode_time_s"], rel=1e-9)
        for what in ("prefill", "decode"):
            assert s[f"{what}_tokens_per_s"] == pytest.approx(s[f"{what}_tokens"] / s[f"{what}_time_s"])
        assert s["output_tokens_per_s"] == pytest.approx(s["output_tokens"] / s["e2e_time_s"])
        assert s["kv_cache_bytes"] == s["kv_cache_bytes_formula"] > 0
    assert r.settings[1]["kv_cache_bytes"] == 2 * r.settings[0]["kv_cache_bytes"]
    assert [row["batch"] for row in r.sweep["rows"]] == [1, 2]
    assert r.memory["weights"]["total"] > 0 and r.memory["disk"]["bytes"] > 0
    assert r.machine["backend_info"] == pq.ops.backend_info() and r.machine["threads"] == 1
    assert r.config["batch_sizes"] == [1, 2] and r.config["threads"] == 1

    res = r.to_results(variant="fp32", model={"name": "tiny"})
    path = write_results(str(tmp_path / "bench.json"), res)
    back = read_results(path)
    assert back["kind"] == "bench" and back["complete"] is True and back["variant"] == "fp32"
    assert back["data"]["failed_settings"] == 0
    assert back["data"]["settings"][0]["ttft_s"]["p99"] == pytest.approx(r.settings[0]["ttft_s"]["p99"])
    table = r.table()
    assert "TTFT p50 ms" in table and "decode tok/s" in table and "gain/doubling" in table


def test_threads_restored(tiny_model):
    before = torch.get_num_threads()
    pq.benchmark(tiny_model, None, batch_sizes=(1,), disk=False, **dict(OPTS, threads=1, requests=1, warmup=0))
    assert torch.get_num_threads() == before


def test_prompts_fixed_and_shared_across_batch_sizes(tiny_model):
    allowed = allowed_token_ids(tiny_model)
    assert not {0, 1, 2} & set(allowed.tolist()) and allowed.numel() == 297
    a = prompt_ids(allowed, 4, 20, seed=7, request=3)
    assert torch.equal(a, prompt_ids(allowed, 4, 20, seed=7, request=3))
    assert torch.equal(a[:2], prompt_ids(allowed, 2, 20, seed=7, request=3))  # batch 2 = first rows of batch 4
    assert not torch.equal(a, prompt_ids(allowed, 4, 20, seed=8, request=3))
    assert not torch.equal(a, prompt_ids(allowed, 4, 20, seed=7, request=4))
    assert torch.isin(a, allowed).all()


def test_tokenizer_specials_excluded(tiny_model):
    tok = type("Tok", (), {"all_special_ids": [5, 6], "__len__": lambda self: 100})()
    ids = set(allowed_token_ids(tiny_model, tok).tolist())
    assert len(ids) == 100 - 5 and not {0, 1, 2, 5, 6} & ids and max(ids) == 99


def test_warmup_excluded_and_same_prompts_timed(tiny_model, monkeypatch):
    calls = []

    def spy(model, ids, gen_len, clock=None, record=False):
        calls.append(ids.clone())
        return run_request(model, ids, gen_len, clock, record)

    monkeypatch.setattr(bm, "run_request", spy)
    r = pq.benchmark(tiny_model, None, batch_sizes=(1, 3), disk=False, **dict(OPTS, warmup=2))
    assert len(calls) == 2 * (2 + OPTS["requests"])
    assert all(s["ttft_s"]["n"] == OPTS["requests"] for s in r.settings)
    # the timed prompts of batch 1 are the first rows of batch 3's; warm-up prompts differ
    assert all(torch.equal(calls[2 + i], calls[5 + 2 + i][:1]) for i in range(OPTS["requests"]))
    assert not torch.equal(calls[0], calls[2])


class _SleepyLM(torch.nn.Module):
    """Fake LM whose prefill sleeps 30 ms and each decode step 10 ms: checks what is timed."""

    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(vocab_size=50, max_position_embeddings=64, num_hidden_layers=1,
                                            num_attention_heads=1, num_key_value_heads=1, hidden_size=4)
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, use_cache=True, past_key_values=None, logits_to_keep=0):
        time.sleep(0.03 if past_key_values is None else 0.01)
        n = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        kv = torch.zeros(input_ids.shape[0], 1, n + input_ids.shape[1], 4)
        return types.SimpleNamespace(logits=torch.zeros(input_ids.shape[0], 1, 50), past_key_values=((kv, kv),))


def test_timed_regions_match_known_work():
    t = run_request(_SleepyLM(), torch.ones(2, 3, dtype=torch.long), gen_len=4)
    assert 0.03 <= t.ttft_s < 0.5
    assert len(t.decode_step_s) == 3 and all(0.01 <= s < 0.5 for s in t.decode_step_s)
    assert t.e2e_s == pytest.approx(t.ttft_s + sum(t.decode_step_s))
    assert t.kv_cache_bytes == 2 * 2 * (3 + 3) * 4 * 4  # K and V, batch 2, 6 positions, dim 4, fp32


def test_oom_at_one_batch_is_reported_and_sweep_continues(tiny_model, monkeypatch):
    def oom_at_4(model, ids, gen_len, clock=None, record=False):
        if ids.shape[0] == 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return run_request(model, ids, gen_len, clock, record)

    monkeypatch.setattr(bm, "run_request", oom_at_4)
    r = pq.benchmark(tiny_model, None, batch_sizes=(1, 4, 2), disk=False, **OPTS)
    by_b = {s["batch"]: s for s in r.settings}
    assert by_b[4]["status"] == "error" and "out of memory" in by_b[4]["error"]
    assert by_b[1]["status"] == by_b[2]["status"] == "ok"
    assert [row["batch"] for row in r.sweep["rows"]] == [1, 2]
    assert r.to_results()["data"]["failed_settings"] == 1
    assert "out of memory" in r.table()


def test_other_errors_propagate(tiny_model, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(bm, "run_request", boom)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        pq.benchmark(tiny_model, None, batch_sizes=(1,), disk=False, **OPTS)


def test_cpu_profile_writes_trace_and_nvtx_is_noop(tiny_model, tmp_path):
    assert not nvtx.enabled()
    r = pq.benchmark(tiny_model, None, batch_sizes=(1, 2), disk=False, profile=True,
                     trace_prefix=str(tmp_path / "run"), **dict(OPTS, requests=2, gen_len=3))
    assert r.profile["traces"] == [str(tmp_path / "run.b1.trace.json"), str(tmp_path / "run.b2.trace.json")]
    with open(r.profile["traces"][1]) as f:
        names = {e.get("name") for e in json.load(f)["traceEvents"]}
    assert "pyquant/prefill b=2 L=12" in names and "pyquant/decode step=2" in names
    assert "pyquant/decode step=3" not in names  # gen_len 3 -> 2 decode steps
    assert r.settings[0]["ttft_s"]["n"] == 2  # the warm-up is outside the trace and the statistics


@pytest.mark.parametrize("kw,match", [
    (dict(requests=0), "requests"), (dict(batch_sizes=(0, 2)), "batch sizes"), (dict(gen_len=0), "gen_len"),
    (dict(prompt_len=-3), "prompt_len"), (dict(warmup=-1), "warmup"), (dict(device="tpu"), "unknown device"),
    (dict(threads=0), "threads"), (dict(prompt_len=250, gen_len=7), "exceeds the model's context of 256"),
])
def test_bad_input_raises(tiny_model, kw, match):
    with pytest.raises(ValueError, match=match):
        pq.benchmark(tiny_model, None, **dict(dict(OPTS, batch_sizes=(1,), disk=False), **kw))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_cuda_raises(tiny_model):
    with pytest.raises(ValueError, match="CUDA is not available"):
        pq.benchmark(tiny_model, None, device="cuda", **dict(OPTS, batch_sizes=(1,), disk=False))
