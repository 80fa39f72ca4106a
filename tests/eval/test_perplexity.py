"""Perplexity: window schemes (hand-computed and against lm-eval's own functions), totals against
a float64 full-sequence oracle and against lm-evaluation-harness's HFLM.loglikelihood_rolling."""
import math
import random

import pytest
import torch

import pyquant as pq
from pyquant.eval.perplexity import count_bytes, count_words, rolling_windows, strided_windows
from evalkit import CORPUS, full_logprobs, make_model, make_tokenizer


def test_rolling_windows_hand_case():
    toks = list(range(1, 11))  # 10 tokens, context 4, prefix 0
    assert rolling_windows(toks, 0, 4) == [
        ([0, 1, 2, 3, 4], 4),   # reads [0 1 2 3], predicts 1 2 3 4
        ([4, 5, 6, 7, 8], 4),   # reads [4 5 6 7], predicts 5 6 7 8
        ([6, 7, 8, 9, 10], 2),  # reads [6 7 8 9], predicts 9 10 (with extra history)
    ]
    assert rolling_windows([], 0, 4) == []
    assert rolling_windows([5, 6], 0, 4) == [([0, 5, 6], 2)]


def test_rolling_windows_equal_lm_eval():
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    rng = random.Random()
    for _ in range(50):
        n, ctx = rng.randint(0, 60), rng.randint(1, 17)
        toks = [rng.randint(1, 99) for _ in range(n)]
        want = [make_disjoint_window(w) for w in get_rolling_token_windows(toks, 0, ctx, 1)]
        got = rolling_windows(toks, 0, ctx)
        assert [(c + p)[-(ctx + 1):] for c, p in want] == [w for w, _ in got]
        assert [len(p) for _, p in want] == [k for _, k in got]


def test_strided_windows_cover_every_token_once_with_history():
    rng = random.Random()
    for _ in range(50):
        n, ctx = rng.randint(1, 60), rng.randint(2, 17)
        stride = rng.randint(1, ctx)
        toks = list(range(1, n + 1))
        wins = strided_windows(toks, 0, ctx, stride)
        scored = [t for w, k in wins for t in w[-k:]]
        assert scored == toks
        for j, (w, k) in enumerate(wins):
            assert len(w) - 1 <= ctx
            if j:  # after the first window every scored token sees >= ctx - stride tokens
                assert len(w) - k >= ctx - stride  # tokens read before the first scored one
    assert strided_windows([1, 2, 3, 4, 5], 0, 4, 2) == [([0, 1, 2, 3, 4], 4), ([2, 3, 4, 5], 1)]


def test_matches_full_sequence_oracle(model, tok):
    text = CORPUS[0] + " " + CORPUS[2]
    toks = tok(text, add_special_tokens=False)["input_ids"]
    lp = full_logprobs(model, [tok.eos_token_id] + toks)
    want = float(lp[:-1].gather(1, torch.tensor(toks)[:, None]).sum())
    for mode in ("rolling", "strided"):
        r = pq.perplexity(model, tok, [text], context=len(toks) + 4, mode=mode)
        assert r.loglikelihood == pytest.approx(want, rel=1e-5)
        assert r.tokens == len(toks) and r.words == count_words(text) and r.bytes == count_bytes(text)
        assert r.token_perplexity == pytest.approx(math.exp(-want / len(toks)), rel=1e-5)
        assert r["bits_per_byte"] == pytest.approx(-want / len(text.encode()) / math.log(2), rel=1e-5)
        assert r.word_perplexity == pytest.approx(math.exp(-want / len(text.split())), rel=1e-5)
    # shorter windows see less history: strided with a larger overlap is closer to the full context
    short = pq.perplexity(model, tok, [text], context=8, mode="rolling").loglikelihood
    assert short != pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("bos", [False, True])
def test_rolling_equals_lm_eval(bos):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    tok = make_tokenizer(bos=bos)
    model = make_model(tok, seed=int(torch.randint(0, 1000, ())))
    docs = [" ".join(CORPUS) * 2, CORPUS[3]]
    ours = pq.perplexity(model, tok, docs, context=24, batch_size=3)
    lm = HFLM(pretrained=model, tokenizer=tok, max_length=24, batch_size=1, add_bos_token=False)
    reqs = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(d,), idx=i) for i, d in enumerate(docs)]
    theirs = lm.loglikelihood_rolling(reqs, disable_tqdm=True)
    for doc, ll in zip(ours.documents, theirs):
        assert doc.loglikelihood == pytest.approx(ll, rel=1e-4)
    assert ours.loglikelihood == pytest.approx(sum(theirs), rel=1e-4)
    assert ours.settings["prefix_token"] == (tok.bos_token_id if bos else tok.eos_token_id)


def test_bad_input(model, tok):
    for kw, msg in ((dict(mode="chunks"), "mode"), (dict(mode="strided", stride=0), "stride"),
                    (dict(mode="strided", context=8, stride=9), "stride"), (dict(context=0), "context"),
                    (dict(stride=4), "strided' only"), (dict(context=10**6), "max_position")):
        with pytest.raises(ValueError, match=msg):
            pq.perplexity(model, tok, ["some text"], **kw)
    with pytest.raises(ValueError, match="no texts"):
        pq.perplexity(model, tok, [])
