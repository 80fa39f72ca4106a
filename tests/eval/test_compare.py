"""compare on tiny random models: self-comparison, per-token metrics against a float64 oracle,
NaN accounting, tokenizer mismatch, JSON output."""
import math

import numpy as np
import pytest
import torch

import pyquant as pq
from pyquant.results import make_results, read_results, write_results
from evalkit import full_logprobs, make_model, make_tokenizer


@pytest.fixture(scope="module")
def perturbed(tok):
    m = make_model(tok)
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.03)
    return m


def test_self_comparison_is_zero(model, tok, store):
    r = pq.compare(model, store, tokenizer=tok, reference_model=model, exact=True, batch_size=3)
    a = r.stats["all"]
    assert a["tokens"] == store.num_rows and a["nonfinite"] == 0
    assert abs(a["kl_mean"]) < 1e-6 and a["kl_max"] < 1e-5 and a["kl_exact_mean"] < 1e-6
    assert a["top1_agree"] == 1.0 and a["reject_mean"] < 1e-5
    assert abs(a["delta_p_mean"]) < 1e-6 and a["ppl_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert a["ln_ppl_corr"] == pytest.approx(1.0, abs=1e-6)


def oracle_kl(lp_top, lq_top):
    """N+1-bucket KL and TV in float64, straight from DESIGN.md."""
    p, q = lp_top.exp(), lq_top.exp()
    pr, qr = (1 - p.sum(-1)).clamp(min=0), (1 - q.sum(-1)).clamp(min=0)
    kl = (p * (lp_top - lq_top)).sum(-1) + torch.where(pr > 0, pr * (pr.log() - qr.clamp(min=1e-7).log()), torch.zeros_like(pr))
    tv = 0.5 * ((p - q).abs().sum(-1) + (pr - qr).abs())
    return kl, tv


def test_per_token_metrics_match_float64_oracle(model, perturbed, tok, store):
    r = pq.compare(perturbed, store, tokenizer=tok, reference_model=model, exact=True, batch_size=2)
    pt = r.per_token
    assert set(("kl", "kl_renorm", "reject", "top1_agree", "delta_p", "nll")) <= set(pt)
    off = 0
    for i in range(len(store)):
        s = store[i]
        n = len(s) - 1
        lq = full_logprobs(perturbed, s.tokens)[:-1]
        lp = full_logprobs(model, s.tokens)[:-1]
        lq_top = lq.gather(1, s.top_ids.long())
        kl, tv = oracle_kl(s.top_logprobs.double(), lq_top)
        sl = slice(off, off + n)
        np.testing.assert_allclose(pt["kl"][sl], kl.numpy(), rtol=1e-3, atol=2e-6)
        np.testing.assert_allclose(pt["reject"][sl], tv.numpy(), rtol=1e-3, atol=2e-6)
        nxt = s.tokens[1:, None]
        np.testing.assert_allclose(pt["nll"][sl], -lq.gather(1, nxt).squeeze(1).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(pt["delta_p"][sl], (lq.gather(1, nxt).exp() - lp.gather(1, nxt).exp()).squeeze(1).numpy(), atol=1e-5)
        np.testing.assert_array_equal(pt["top1_agree"][sl], (lq.argmax(1) == s.top_ids[:, 0].long()).double().numpy())
        exact = (lp.exp() * (lp - lq)).sum(-1)
        np.testing.assert_allclose(pt["kl_exact"][sl], exact.numpy(), rtol=1e-3, atol=1e-6)
        off += n
    assert off == store.num_rows
    assert (pt["kl"] <= pt["kl_exact"] + 1e-6).all()
    a, pre, gen = (r.stats[k] for k in ("all", "prefill", "generation"))
    assert a["kl_mean"] == pytest.approx(pt["kl"].mean()) and a["kl_max"] == pytest.approx(pt["kl"].max())
    assert a["kl_mean"] > 1e-3 and a["kl_mean_ci95"][0] <= a["kl_mean"] <= a["kl_mean_ci95"][1]
    n_pre = sum(store[i].prompt_len - 1 for i in range(len(store)))
    assert pre["tokens"] == n_pre and gen["tokens"] == store.num_rows - n_pre
    assert a["ppl_cand"] == pytest.approx(math.exp(pt["nll"].mean()))
    assert a["ppl_ref"] == pytest.approx(math.exp(-np.concatenate([store[i].next_logprobs.numpy() for i in range(len(store))]).mean()), rel=1e-6)
    assert a["delta_p_rms"] == pytest.approx(float(np.sqrt((pt["delta_p"] ** 2).mean())))
    assert sum(r.curve["position"]["tokens"]) == store.num_rows


def test_nonfinite_tokens_are_counted_and_excluded(model, tok, store):
    cand = make_model(tok)  # same weights as the reference
    bad_pos = 2

    def poison(module, args, out):
        out = out.clone()
        out[:, bad_pos] = float("nan")
        return out

    h = cand.model.norm.register_forward_hook(poison)
    try:
        r = pq.compare(cand, store, tokenizer=tok)
    finally:
        h.remove()
    a = r.stats["all"]
    assert a["nonfinite"] == len(store) and a["tokens"] == store.num_rows - len(store)
    assert np.isnan(r.per_token["kl"][r.per_token["pos"] == bad_pos]).all()
    for k in ("kl_mean", "kl_max", "reject_mean", "delta_p_mean", "ppl_cand", "kl_mean_ci95"):
        assert np.all(np.isfinite(a[k])), k
    assert a["kl_mean"] < 1e-6 and a["top1_agree"] == 1.0
    assert r.stats["prefill"]["nonfinite"] + r.stats["generation"]["nonfinite"] == len(store)


def test_tokenizer_mismatch_is_an_error(model, store):
    other = make_tokenizer(bos=True)
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        pq.compare(model, store, tokenizer=other)


def test_bad_input(model, store, perturbed):
    with pytest.raises(ValueError, match="reference_model"):
        pq.compare(model, store, exact=True)
    with pytest.raises(ValueError, match="not the model"):
        pq.compare(model, store, exact=True, reference_model=perturbed)
    with pytest.raises(ValueError, match="batch_size"):
        pq.compare(model, store, batch_size=0)


def test_results_json_round_trip(tmp_path, perturbed, tok, store):
    r = pq.compare(perturbed, store, tokenizer=tok)
    d = r.to_dict(per_token=True)
    path = write_results(str(tmp_path / "c.json"), make_results("compare", d, variant="perturbed"))
    back = read_results(path)["data"]
    keys = {"kl_mean", "kl_median", "kl_p90", "kl_p95", "kl_p99", "kl_p999", "kl_max", "kl_renorm_mean", "reject_mean",
            "reject_p99", "top1_agree", "delta_p_mean", "delta_p_rms", "ppl_ref", "ppl_cand", "ppl_ratio",
            "kl_mean_ci95", "top1_agree_ci95", "tokens", "nonfinite"}
    for scope in ("all", "prefill", "generation"):
        assert keys <= set(back["stats"][scope])
    assert len(back["per_token"]["kl"]) == store.num_rows
    assert back["kl_quantiles"]["kl"][100] == pytest.approx(r.stats["all"]["kl_max"])
    assert "KL mean" in r.table()


@pytest.mark.parametrize("model_type", ["gemma2", "phi"])
def test_heads_with_a_soft_cap_or_a_bias_end_to_end(model_type, tok, prompts):
    """Gemma 2's soft cap (at 3, where it bends the logits) and Phi's LM-head bias (random): the
    recorded reference, the comparison with an INT8 copy and the perplexity all match float64
    oracles built from the models' own logits."""
    import copy

    from pyquant.eval.collect import collect_reference
    from evalkit import make_arch_model

    model = make_arch_model(model_type, tok, **({"final_logit_softcapping": 3.0} if model_type == "gemma2" else {}))
    if model.lm_head.bias is not None:
        torch.manual_seed(1)
        model.lm_head.bias.data.normal_(0.0, 1.0)
    cand = pq.quantize_model(copy.deepcopy(model), "int8", skip=())  # the head too: a QuantLinear with its bias
    store = collect_reference(model, tok, prompts[:2], max_new_tokens=4, top_n=8, batch_size=2)
    r = pq.compare(cand, store, tokenizer=tok, reference_model=model, exact=True, batch_size=2)
    off = 0
    for i in range(len(store)):
        s = store[i]
        n = len(s) - 1
        lp = full_logprobs(model, s.tokens)[:-1]
        lq = full_logprobs(cand, s.tokens)[:-1]
        top = lp.topk(8)
        np.testing.assert_allclose(s.top_logprobs.double().numpy(), top.values.numpy(), atol=2e-5)
        exact = (lp.exp() * (lp - lq)).sum(-1)
        np.testing.assert_allclose(r.per_token["kl_exact"][off:off + n], exact.numpy(), rtol=1e-3, atol=1e-6)
        nxt = s.tokens[1:, None]
        np.testing.assert_allclose(r.per_token["nll"][off:off + n], -lq.gather(1, nxt).squeeze(1).numpy(), atol=1e-5)
        off += n
    assert r.stats["all"]["kl_exact_mean"] > 1e-6
    text = prompts[2] + " " + prompts[3]
    toks = tok(text, add_special_tokens=False)["input_ids"]
    want = float(full_logprobs(model, [tok.eos_token_id] + toks)[:-1].gather(1, torch.tensor(toks)[:, None]).sum())
    assert pq.perplexity(model, tok, [text], context=len(toks) + 4).loglikelihood == pytest.approx(want, rel=1e-5)
