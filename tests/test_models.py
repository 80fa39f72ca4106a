"""pyquant.models: load_model on HF / quantized directories (and the bundled demo, slow),
fingerprints, lm_head_weight, final_hidden_states, model_description."""
import os
import time

import pytest
import torch
from torch import nn

import pyquant as pq
from pyquant.formats import QuantizedWeight
from pyquant.models import (final_hidden_states, lm_head_weight, load_model, model_description, model_fingerprint,
                            tokenizer_fingerprint)
from quant.tinymodels import random_ids, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture
def hf_dir(tmp_path, tok):
    model = tiny_llama(tie=True)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return model, tmp_path


def test_load_hf_directory(hf_dir, tok):
    original, path = hf_dir
    model, tok2 = load_model(str(path))
    assert not model.training and model.pyquant_source == str(path)
    ids = random_ids()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)
    assert model_fingerprint(model) == model_fingerprint(original)
    assert tokenizer_fingerprint(tok2) == tokenizer_fingerprint(tok)
    assert tok2("w5 w7").input_ids == [5, 7]
    bf, _ = load_model(str(path), dtype="bfloat16")
    assert bf.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model_fingerprint(bf) != model_fingerprint(model)


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="is not 'demo'"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="config.json is missing"):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match="unsupported dtype"):
        load_model(str(tmp_path), dtype="float8")


def test_model_fingerprint_stable_and_sensitive():
    model = tiny_llama()
    fp = model_fingerprint(model)
    assert fp == model_fingerprint(model) and len(fp) == 64
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] += 1e-3  # the first element is always sampled
    fp2 = model_fingerprint(model)
    assert fp2 != fp
    model.config.rms_norm_eps = 1e-3
    fp3 = model_fingerprint(model)
    assert fp3 != fp2
    model.config._name_or_path = "/somewhere/else"  # where it was loaded from is not what it is
    assert model_fingerprint(model) == fp3
    pq.quantize_model(model, "int8")
    assert model_fingerprint(model) != fp3
    assert model_fingerprint(tiny_llama()) != fp  # fresh random weights


def test_tokenizer_fingerprint_stable_and_sensitive(tok):
    fp = tokenizer_fingerprint(tok)
    assert fp == tokenizer_fingerprint(tiny_tokenizer())
    assert fp != tokenizer_fingerprint(tiny_tokenizer(vocab=299))
    other = tiny_tokenizer()
    other.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    assert tokenizer_fingerprint(other) != fp
    with pytest.raises(ValueError):
        tokenizer_fingerprint(None)


def test_lm_head_weight_and_final_hidden_states():
    model = tiny_llama(tie=True)
    w = lm_head_weight(model)
    assert isinstance(w, torch.Tensor) and w.shape == (300, 64) and w is model.model.embed_tokens.weight
    ids = random_ids(2, 8)
    with torch.no_grad():
        hidden, past = final_hidden_states(model, ids)
        assert hidden.shape == (2, 8, 64) and past is None
        want = model(ids).logits.double()
        torch.testing.assert_close(hidden.double() @ w.double().T, want, rtol=1e-4, atol=1e-4)
        # incremental: prefix with a cache, then the last token alone
        h1, past = final_hidden_states(model, ids[:, :5], use_cache=True)
        h2, _ = final_hidden_states(model, ids[:, 5:], past_key_values=past, use_cache=True)
        torch.testing.assert_close(torch.cat([h1, h2], 1), hidden, rtol=1e-4, atol=1e-4)
    pq.quantize_model(model, "int4-g32", skip=())
    qw = lm_head_weight(model)
    assert isinstance(qw, QuantizedWeight) and qw.shape == (300, 64)
    with torch.no_grad():
        hidden, _ = final_hidden_states(model, ids)
        logits = pq.ops.qmatmul(hidden, qw)
        torch.testing.assert_close(logits, model(ids).logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="2-D"):
        final_hidden_states(model, ids[0])


def test_model_description_counts_bytes():
    model = tiny_llama(tie=True)
    d = model_description(model)
    unique = {p.data_ptr(): p for p in model.parameters()}.values()  # tied weight counted once
    assert d["parameters"] == sum(p.numel() for p in unique)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert d["weight_bytes"] == sum(p.numel() * 4 for p in unique) + buffers
    assert d["quantized_layers"] == 0 and d["quant"] is None and d["tied_embeddings"] and d["vocab_size"] == 300
    pq.quantize_model(model, "int4-g32", overrides={"*down_proj": "int8"})
    q = model_description(model)
    assert q["parameters"] == d["parameters"]
    qlayers = [m for m in model.modules() if isinstance(m, pq.QuantLinear)]
    linear_fp32 = sum(m.in_features * m.out_features * 4 for m in qlayers)
    assert q["weight_bytes"] == d["weight_bytes"] - linear_fp32 + sum(m.qw.nbytes for m in qlayers)
    assert q["quantized_layers"] == 14 and q["quant"]["specs"] == {"int4-g32": 12, "int8": 2}


@pytest.mark.slow
def test_demo_load_cache_quantize_generate(tmp_path, monkeypatch):
    """The bundled SmolLM2-135M: first load converts the GGUF and caches it, the second reads the
    cache; int4-g128 quantized, it still answers a simple prompt coherently."""
    monkeypatch.setenv("PYQUANT_CACHE", str(tmp_path / "cache"))
    t0 = time.perf_counter()
    model, tok = load_model("demo")
    t1 = time.perf_counter()
    model2, _ = load_model("demo")
    t2 = time.perf_counter()
    assert len(os.listdir(tmp_path / "cache")) == 1
    assert model_fingerprint(model) == model_fingerprint(model2)
    print(f"demo load: first {t1 - t0:.1f} s (GGUF conversion), cached {t2 - t1:.1f} s")
    assert t2 - t1 < t1 - t0
    d = model_description(model)
    assert d["vocab_size"] == 49152 and d["hidden_size"] == 576 and d["tied_embeddings"]
    ids = tok("The capital of France is", return_tensors="pt")
    assert ids.input_ids[0, 0].item() != tok.bos_token_id  # the demo tokenizer adds no BOS
    pq.quantize_model(model, "int4-g128")
    q = model_description(model)
    assert q["weight_bytes"] < 0.6 * d["weight_bytes"]  # the tied embedding stays fp32
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, ids.input_ids.shape[1]:])
    print("int4-g128:", repr(text))
    assert "Paris" in text


def _tiny(config_cls, model_cls, **kw):
    import transformers

    torch.manual_seed(0)
    kw = dict(dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0), **kw)
    cfg = getattr(transformers, config_cls)(**kw)
    return getattr(transformers, model_cls)(cfg).eval()


@pytest.mark.parametrize("config_cls,model_cls,kw", [
    ("Gemma2Config", "Gemma2ForCausalLM", dict(num_key_value_heads=2, head_dim=16, final_logit_softcapping=2.0)),
    ("RecurrentGemmaConfig", "RecurrentGemmaForCausalLM", dict(num_key_value_heads=2, logits_soft_cap=2.0,
                                                                          num_hidden_layers=3)),  # its 3rd: attention
    ("PhiConfig", "PhiForCausalLM", {}),
])
def test_lm_head_carries_the_bias_and_the_soft_cap(config_cls, model_cls, kw):
    """Gemma 2 and RecurrentGemma soft-cap their logits (each under its own config key), Phi's head
    has a bias: ``lm_head`` carries them, and its weight, bias and cap applied to
    ``final_hidden_states`` give the model's own logits."""
    from pyquant.models import lm_head
    from pyquant.ops import reference

    model = _tiny(config_cls, model_cls, **kw)
    head = lm_head(model)
    if head.bias is not None:
        torch.manual_seed(1)
        model.lm_head.bias.data.normal_(0.0, 1.0)
        assert head.bias.data_ptr() == model.lm_head.bias.data_ptr()
    assert head.softcap == kw.get("final_logit_softcapping", kw.get("logits_soft_cap"))
    ids = random_ids(2, 9, 300)
    with torch.no_grad():
        hidden, _ = final_hidden_states(model, ids)
        want = model(ids).logits.double().reshape(-1, 300)
        got = reference.stream_logits(hidden.reshape(-1, 64), head)
        bare = reference.stream_logits(hidden.reshape(-1, 64), head.weight)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert float((bare - want).abs().max()) > 0.5  # the cap or the bias matters here


def test_final_hidden_states_refuses_heads_it_cannot_reproduce():
    """Scores come from the LM head applied to the final hidden states: a model whose logits are
    not that (scaled or not) is refused, found by comparing its own logits with its head applied to
    its hidden states once."""
    from transformers import LlamaForCausalLM

    ids = random_ids(2, 9, 300)

    class Shifted(LlamaForCausalLM):  # e.g. a remote-code model post-processing its logits
        def forward(self, *a, **kw):
            out = super().forward(*a, **kw)
            out.logits = out.logits * 0.5 + 1.0
            return out

    with pytest.raises(ValueError, match="not its LM head applied to its final hidden states"):
        final_hidden_states(Shifted(tiny_llama(seed=1).config).eval(), ids)


@pytest.mark.parametrize("arch,key,value,scale", [
    ("Granite", "logits_scaling", 8.0, 1 / 8),   # divides its logits by logits_scaling
    ("Granite", "logits_scaling", 3.0, 1 / 3),
    ("Cohere", "logit_scale", 0.0625, 0.0625),   # multiplies them by logit_scale
])
def test_scaled_logits_are_scored_with_their_scale(arch, key, value, scale):
    """A model that scales its logits gets hidden states scaled to match (the exact config value):
    hidden @ lm_head.T equals its own logits, and the streamed log-probs its log-softmax."""
    model = _tiny(f"{arch}Config", f"{arch}ForCausalLM", num_key_value_heads=2, **{key: value})
    ids = random_ids(2, 9, 300)
    assert pq.models.logit_scale(model) == scale
    with torch.no_grad():
        hidden, _ = final_hidden_states(model, ids)
        want = model(ids).logits.double()
        got = hidden.double() @ lm_head_weight(model).double().T
        lp = pq.ops.stream_logprobs(hidden.reshape(-1, 64), lm_head_weight(model), top_n=3).top_logprobs
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert torch.allclose(lp.double(), torch.log_softmax(want.reshape(-1, 300), -1).topk(3).values, atol=1e-4)


def test_final_hidden_states_checks_the_head_once_per_model(monkeypatch):
    model = tiny_llama(seed=2)
    calls = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, *a, **kw: calls.append(1) or forward(self, *a, **kw))
    ids = random_ids(2, 9, 300)
    h1, _ = final_hidden_states(model, ids)
    h2, _ = final_hidden_states(model, ids)
    assert len(calls) == 1 and torch.equal(h1, h2)
    other = tiny_llama(seed=3)
    final_hidden_states(other, ids)
    assert len(calls) == 2  # a new model object is checked again
    other.train()
    del pq.models._LOGIT_SCALES[other]
    final_hidden_states(other, ids)
    assert len(calls) == 2  # training mode (dropout) cannot be compared: not checked
