import os
import threading

import pytest
import torch

import pyquant as pq
from pyquant.perf.latency import allowed_token_ids, prompt_ids, run_request
from pyquant.perf.memory import disk_bytes, kv_cache_bytes, peak_rss_worker, weight_bytes


def _fp32_param_bytes(cfg, tied):
    h, i, v, l = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h  # q, o; k, v; gate, up, down; 2 norms
    return 4 * (v * h * (1 if tied else 2) + l * per_layer + h)


def _buffer_bytes(m):
    return sum(b.numel() * b.element_size() for b in m.buffers())


@pytest.mark.parametrize("tied", [False, True])
def test_weight_bytes_fp32_hand_computed(tied, make_llama):
    m = make_llama()
    if tied:
        m.lm_head.weight = m.model.embed_tokens.weight
    wb = weight_bytes(m)
    assert wb["quantized"] == 0 and wb["quantized_layers"] == 0
    assert wb["total"] == wb["dense"] == _fp32_param_bytes(m.config, tied) + _buffer_bytes(m)
    from pyquant.models import model_description

    assert wb["total"] == model_description(m)["weight_bytes"]


@pytest.mark.parametrize("spec,per_row", [("int8", lambda k: k + 4),  # codes + fp32 scale
                                           ("int4-g32", lambda k: k // 2 + (k // 32) * 5)])  # + scale, zero
def test_weight_bytes_quantized_below_fp32(spec, per_row, make_llama):
    fp = make_llama()
    q = pq.quantize_model(make_llama(), spec)
    wf, wq = weight_bytes(fp), weight_bytes(q)
    lin = [(n, mod) for n, mod in fp.named_modules() if isinstance(mod, torch.nn.Linear) and "lm_head" not in n]
    assert wq["quantized_layers"] == len(lin) == 14
    assert wq["quantized"] == sum(mod.out_features * per_row(mod.in_features) for _, mod in lin)
    assert wq["dense"] == wf["total"] - sum(mod.weight.numel() * 4 for _, mod in lin)
    assert wq["total"] < wf["total"]
    from pyquant.models import model_description

    assert wq["total"] == model_description(q)["weight_bytes"]


def test_kv_cache_bytes_formula_and_measured(tiny_model):
    cfg = tiny_model.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    assert kv_cache_bytes(cfg, 3, 10) == 2 * 2 * 3 * 2 * hd * 10 * 4
    assert kv_cache_bytes(cfg, 3, 10, torch.bfloat16) == kv_cache_bytes(cfg, 3, 10) // 2
    ids = prompt_ids(allowed_token_ids(tiny_model), 3, 7, seed=0, request=0)
    t = run_request(tiny_model, ids, gen_len=4)
    assert t.kv_cache_bytes == kv_cache_bytes(cfg, 3, 7 + 4 - 1)
    with pytest.raises(ValueError):
        kv_cache_bytes(cfg, -1, 3)


def test_disk_bytes(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 234)
    assert disk_bytes(str(tmp_path)) == 1234 and disk_bytes(str(tmp_path / "a.bin")) == 1000
    with pytest.raises(ValueError, match="no such file"):
        disk_bytes(str(tmp_path / "missing"))


def test_worker_peak_rss_int4_below_fp32(tmp_path, make_llama):
    """Isolated workers on a ~42 MB fp32 model and its int4 twin (~10 MB): the peak RSS during a
    request differs by most of the weight difference (each worker holds only its own model)."""
    models = {"fp32": make_llama(hidden=512, inter=1536, layers=3, vocab=1000)}
    models["int4"] = pq.quantize_model(make_llama(hidden=512, inter=1536, layers=3, vocab=1000), "int4-g128")
    ids = prompt_ids(allowed_token_ids(models["fp32"]), 2, 16, seed=0, request=0)
    torch.save(ids, tmp_path / "ids.pt")
    out = {}

    def work(name):
        torch.save(models[name], tmp_path / f"{name}.pt")
        out[name] = peak_rss_worker(str(tmp_path / f"{name}.pt"), str(tmp_path / "ids.pt"), 3, threads=1, timeout=300)

    threads = [threading.Thread(target=work, args=(n,)) for n in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, r in out.items():
        assert "error" not in r, r
        assert r["reset_worked"] is True
        assert r["rss_after_load_bytes"] <= r["peak_rss_bytes"] <= r["max_rss_bytes"]
    saved = weight_bytes(models["fp32"])["total"] - weight_bytes(models["int4"])["total"]
    assert saved > 30e6
    assert out["fp32"]["peak_rss_bytes"] - out["int4"]["peak_rss_bytes"] > 0.6 * saved


def test_worker_failure_is_reported(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    r = peak_rss_worker(str(tmp_path / "bad.pt"), str(tmp_path / "bad.pt"), 2, timeout=120)
    assert "error" in r and "exit code" in r["error"]
