"""collect_reference on tiny random models: what is recorded, greedy alignment, resume, errors."""
import os

import pytest
import torch

import pyquant as pq
from pyquant.eval import collect as collect_mod
from evalkit import full_logprobs


def test_records_match_the_full_softmax(model, store, prompts):
    assert len(store) == len(prompts) and store.top_n == 8
    for i in range(len(store)):
        s = store[i]
        lp = full_logprobs(model, s.tokens)[:-1]  # row t predicts tokens[t+1]
        top = lp.topk(8)
        torch.testing.assert_close(s.top_logprobs.double(), top.values, rtol=0, atol=2e-5)
        # ids: equal except where neighbouring log-probs are (numerically) tied
        same = s.top_ids.long() == top.indices
        gaps = (top.values[:, :-1] - top.values[:, 1:]).abs()
        assert bool((same | (torch.cat([gaps, gaps[:, -1:]], 1) < 1e-5)).all())
        nxt = lp.gather(1, s.tokens[1:, None]).squeeze(1)
        torch.testing.assert_close(s.next_logprobs.double(), nxt, rtol=0, atol=2e-5)
        # greedy: every generated token is the argmax of the row before it
        for t in range(s.prompt_len - 1, len(s) - 1):
            assert int(s.tokens[t + 1]) == int(lp[t].argmax()) or float(lp[t].max() - lp[t, s.tokens[t + 1]]) < 1e-5


def test_prompt_boundary_and_lengths(store, tok, prompts):
    for i, p in enumerate(prompts):
        ids = tok(p)["input_ids"]
        s = store[i]
        assert s.prompt_len == len(ids) and s.tokens[:len(ids)].tolist() == ids
        assert len(s) <= len(ids) + 8


def test_resume_after_a_killed_run(tmp_path, model, tok, prompts, monkeypatch):
    out = str(tmp_path / "ref.pqref")
    recorded = []
    real = collect_mod.record_sequences
    monkeypatch.setattr(collect_mod, "record_sequences", lambda m, seqs, *a, **k: recorded.append(len(seqs)) or real(m, seqs, *a, **k))

    def kill_after_first_batch(n, tokens):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pq.collect_reference(model, tok, prompts, max_new_tokens=6, top_n=4, batch_size=2, output=out,
                             progress=kill_after_first_batch)
    assert not os.path.exists(out) and recorded == [2]
    assert sorted(os.listdir(out + ".partial")) == ["part-00000000.pqref", "settings.json"]
    recorded.clear()
    resumed = pq.collect_reference(model, tok, prompts, max_new_tokens=6, top_n=4, batch_size=2, output=out)
    assert recorded == [2]  # only the second batch was computed
    assert not os.path.exists(out + ".partial") and os.path.exists(out)
    fresh = pq.collect_reference(model, tok, prompts, max_new_tokens=6, top_n=4, batch_size=2)
    assert len(resumed) == len(fresh) == 4
    for i in range(4):
        assert torch.equal(resumed[i].tokens, fresh[i].tokens)
        torch.testing.assert_close(resumed[i].top_logprobs, fresh[i].top_logprobs)


def test_resume_refuses_other_settings(tmp_path, model, tok, prompts):
    out = str(tmp_path / "ref.pqref")

    def stop(n, tokens):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pq.collect_reference(model, tok, prompts, max_new_tokens=4, top_n=4, batch_size=2, output=out, progress=stop)
    with pytest.raises(ValueError, match="different settings.*top_n"):
        pq.collect_reference(model, tok, prompts, max_new_tokens=4, top_n=5, batch_size=2, output=out)


def test_sampling_is_seeded(model, tok, prompts):
    a = pq.collect_reference(model, tok, prompts[:2], max_new_tokens=6, top_n=2, sample=True, seed=1)
    b = pq.collect_reference(model, tok, prompts[:2], max_new_tokens=6, top_n=2, sample=True, seed=1)
    c = pq.collect_reference(model, tok, prompts[:2], max_new_tokens=6, top_n=2, sample=True, seed=2)
    assert all(torch.equal(a[i].tokens, b[i].tokens) for i in range(2))
    assert not all(torch.equal(a[i].tokens, c[i].tokens) for i in range(2))
    assert a.meta["generation"]["sample"] is True and a.meta["generation"]["seed"] == 1


def test_bad_input(model, tok):
    with pytest.raises(ValueError, match="empty prompt set"):
        pq.collect_reference(model, tok, [])
    with pytest.raises(ValueError, match="top_n"):
        pq.collect_reference(model, tok, ["hello"], top_n=10_000)
    with pytest.raises(ValueError, match="max_new_tokens"):
        pq.collect_reference(model, tok, ["hello"], max_new_tokens=-1)
    with pytest.raises(ValueError, match="chat template"):
        pq.collect_reference(model, tok, [[{"role": "user", "content": "hi"}]])
