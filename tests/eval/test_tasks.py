"""Multiple-choice task accuracy and flips: item files, scoring against a float64 oracle and against
lm-evaluation-harness's HFLM.loglikelihood, statistics against hand-computed values, resume."""
import copy
import json
import math
import random

import pytest
import torch

import pyquant as pq
from pyquant.eval.tasks import (TaskResult, encode_choice, evaluate_tasks, mcnemar_exact_p, read_tasks,
                                wilson_ci)
from evalkit import TINY_ARCHS, full_logprobs, make_arch_model, make_model, make_tokenizer

WORDS = ["the", "quick", "brown", "fox", "model", "hello", "world", "tokens", "lazy", "dog", "small", "ship"]


def random_items(n, rng, tasks=("alpha", "beta")):
    items = []
    for i in range(n):
        k = rng.randint(2, 4)
        choices = rng.sample(WORDS, k)
        ctx = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9)))
        if i % 5 == 3:
            ctx += " "  # trailing space: moves to the continuation
        items.append({"id": f"q{i}", "task": tasks[i % len(tasks)], "context": ctx, "choices": choices,
                      "answer": rng.randrange(k)})
    return items


def oracle_loglik(model, tok, context, choice):
    """float64 log-likelihood of " " + choice after context, from the full-sequence log-softmax."""
    ctx, cont = encode_choice(tok, context, " " + choice, tok.eos_token_id)
    full = ctx + cont
    lp = full_logprobs(model, full[:-1])
    return sum(float(lp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_scores_equal_float64_oracle_and_predictions_follow(model, tok):
    rng = random.Random()
    items = random_items(9, rng)
    res = evaluate_tasks(model, tok, items, batch_size=4)
    assert [r["id"] for r in res.items] == [it["id"] for it in items]
    for it, r in zip(items, res.items):
        want = [oracle_loglik(model, tok, it["context"], c) for c in it["choices"]]
        assert r["loglik"] == pytest.approx(want, rel=1e-5, abs=1e-4)
        assert r["pred"] == max(range(len(want)), key=lambda j: (r["loglik"][j], -j))
        norm = [ll / len(c) for ll, c in zip(r["loglik"], it["choices"])]
        assert r["pred_norm"] == max(range(len(norm)), key=lambda j: (norm[j], -j))
    s = res.summary()
    assert s["all"]["n"] == 9 and s["all"]["nonfinite"] == 0
    assert s["all"]["acc"] == pytest.approx(sum(r["pred"] == r["answer"] for r in res.items) / 9)
    assert s["alpha"]["n"] == 5 and s["beta"]["n"] == 4
    one = evaluate_tasks(model, tok, items, batch_size=1)  # batching (padding) changes nothing
    for a, b in zip(res.items, one.items):
        assert a["loglik"] == pytest.approx(b["loglik"], rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("bos", [False, True])
def test_loglikelihoods_equal_lm_eval(bos):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    tok = make_tokenizer(bos=bos)
    model = make_model(tok, seed=int(torch.randint(0, 1000, ())))
    rng = random.Random()
    items = random_items(6, rng)
    items[0]["context"] = ""  # lm-eval conditions an empty context on the prefix token
    items[1]["context"] = " ".join(WORDS * 3)  # longer than max_length: cut from the left
    res = evaluate_tasks(model, tok, items, max_length=20, batch_size=3)
    lm = HFLM(pretrained=model, tokenizer=tok, max_length=20, batch_size=1)
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=(it["context"], " " + c), idx=j)
            for it in items for j, c in enumerate(it["choices"])]
    theirs = [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
    ours = [ll for r in res.items for ll in r["loglik"]]
    assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-4)


def test_encode_choice_moves_trailing_space_and_uses_prefix_for_empty_context(tok):
    ctx, cont = encode_choice(tok, "hello ", "world", prefix=7)
    assert ctx == tok("hello", add_special_tokens=False)["input_ids"]
    assert ctx + cont == tok("hello world", add_special_tokens=False)["input_ids"]
    assert encode_choice(tok, "", " world", prefix=7) == ([7], tok(" world")["input_ids"])


def test_wilson_and_mcnemar_hand_values():
    lo, hi = wilson_ci(8, 10)  # the textbook example: 0.4902, 0.9433
    assert (lo, hi) == pytest.approx((0.49016, 0.94330), abs=1e-4)
    assert wilson_ci(0, 5)[0] == 0.0 and math.isnan(wilson_ci(0, 0)[0])
    assert mcnemar_exact_p(5, 1) == pytest.approx(2 * (1 + 6) / 64)
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(3, 3) == 1.0
    assert mcnemar_exact_p(0, 10) == pytest.approx(2 / 1024)


def rec(i, task, answer, pred, pred_norm=None):
    return {"id": f"x{i}", "task": task, "answer": answer, "loglik": [0.0, 0.0, 0.0], "tokens": [1, 1, 1],
            "pred": pred, "pred_norm": pred if pred_norm is None else pred_norm}


def test_flips_hand_case():
    # baseline right on 0-5, wrong on 6-9; candidate loses 0, 1 (right -> wrong), wins 6 (wrong -> right),
    # changes 7's wrong answer to another wrong one; item 9 is NaN in the candidate (left out).
    answers = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    base = [rec(i, "a" if i < 5 else "b", a, a if i < 6 else (a + 1) % 3) for i, a in enumerate(answers)]
    cand_pred = [1, 2, 2, 0, 1, 2, 0, 0, (answers[8] + 1) % 3, None]
    cand = [rec(i, b["task"], b["answer"], p) for i, (b, p) in enumerate(zip(base, cand_pred))]
    r = TaskResult(cand)
    f = r.compare_with(TaskResult(base), label="fp32", path="ref.json")
    a = f["acc"]["all"]
    assert f["baseline"] == {"variant": "fp32", "path": "ref.json"}
    assert (a["n"], a["correct_to_wrong"], a["wrong_to_correct"], a["flips"], a["changed"]) == (9, 2, 1, 3, 4)
    assert a["acc_baseline"] == pytest.approx(6 / 9) and a["acc"] == pytest.approx(5 / 9)
    assert a["delta_acc"] == pytest.approx(-1 / 9) and a["flip_rate"] == pytest.approx(3 / 9)
    assert a["mcnemar_p"] == pytest.approx(1.0)
    half = 1.959963984540054 * math.sqrt((3 / 9 - 1 / 81) / 9)
    assert a["delta_acc_ci95"] == pytest.approx([-1 / 9 - half, -1 / 9 + half])
    assert f["acc"]["a"]["correct_to_wrong"] == 2 and f["acc"]["b"]["wrong_to_correct"] == 1
    assert f["acc"]["b"]["n"] == 4
    s = r.summary()["all"]
    assert (s["n"], s["nonfinite"]) == (9, 1)
    assert "R->W" in r.table() and "1 items with NaN/Inf" in r.table()


def test_flips_refuse_other_items():
    base = TaskResult([rec(0, "a", 0, 0), rec(1, "a", 1, 1)])
    with pytest.raises(ValueError, match="other items"):
        TaskResult([rec(0, "a", 0, 0), rec(2, "a", 1, 1)]).compare_with(base)
    with pytest.raises(ValueError, match="differs from the baseline"):
        TaskResult([rec(0, "a", 0, 0), rec(1, "a", 2, 1)]).compare_with(base)


def test_against_itself_no_flips(model, tok):
    res = evaluate_tasks(model, tok, random_items(6, random.Random()), batch_size=3)
    f = res.compare_with(TaskResult.from_dict(json.loads(json.dumps(res.to_dict()))))
    assert f["acc"]["all"]["flips"] == 0 and f["acc_norm"]["all"]["changed"] == 0
    assert f["acc"]["all"]["delta_acc_ci95"] == [0.0, 0.0]


def test_read_tasks_and_bad_items(tmp_path):
    good = {"context": "Q?", "choices": ["a", "b"], "answer": 1}
    path = write_jsonl(tmp_path / "quiz.jsonl", [good, "", dict(good, id="z", task="t")])
    items = read_tasks(path)
    assert [(it["id"], it["task"]) for it in items] == [("quiz-1", "quiz"), ("z", "t")]
    bad = [("{not json", "not valid JSON"), ([1, 2], "JSON object"), (dict(good, context=3), "context"),
           (dict(good, choices=["a"]), "at least 2"), (dict(good, choices=["a", ""]), "non-empty"),
           (dict(good, choices=["a", "a"]), "repeated choice"), (dict(good, answer=2), "answer"),
           (dict(good, answer=True), "answer")]
    for row, msg in bad:
        p = write_jsonl(tmp_path / "bad.jsonl", [good, row])
        with pytest.raises(ValueError, match=msg) as e:
            read_tasks(p)
        assert "bad.jsonl:2" in str(e.value)
    p = write_jsonl(tmp_path / "dup.jsonl", [dict(good, id="a"), dict(good, id="a")])
    with pytest.raises(ValueError, match="already used"):
        read_tasks(p)
    with pytest.raises(ValueError, match="no task items"):
        read_tasks(write_jsonl(tmp_path / "empty.jsonl", [""]))


def test_bundled_tasks_read():
    items = read_tasks("demo")
    assert len(items) >= 100 and len({it["task"] for it in items}) >= 3


def test_bad_arguments(model, tok):
    items = random_items(3, random.Random(0))
    for kw, msg in ((dict(batch_size=0), "batch_size"), (dict(limit=-1), "limit"), (dict(max_length=1.5), "max_length")):
        with pytest.raises(ValueError, match=msg):
            evaluate_tasks(model, tok, items, **kw)
    with pytest.raises(ValueError, match="unique"):
        evaluate_tasks(model, tok, [items[0], items[0]])


def test_resume_after_interruption(model, tok, tmp_path):
    items = random_items(7, random.Random())
    ckpt = str(tmp_path / "run.partial")
    calls = []

    def stop_after_first(n, tokens):
        calls.append(n)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate_tasks(model, tok, items, batch_size=3, checkpoint=ckpt, progress=stop_after_first)
    seen = []
    resumed = evaluate_tasks(model, tok, items, batch_size=3, checkpoint=ckpt, progress=lambda n, t: seen.append(n))
    assert seen == [3, 3, 1]  # the 3 finished items are reported at once, then only the rest is scored
    fresh = evaluate_tasks(model, tok, items, batch_size=3)
    for a, b in zip(resumed.items, fresh.items):
        assert a["loglik"] == pytest.approx(b["loglik"], rel=1e-6) and a["pred"] == b["pred"]
    with open(f"{ckpt}/items.jsonl", "a") as f:
        f.write('{"id": "torn')  # a kill mid-write leaves a torn line: ignored
    again = evaluate_tasks(model, tok, items, batch_size=3, checkpoint=ckpt)
    assert [r["pred"] for r in again.items] == [r["pred"] for r in fresh.items]
    with pytest.raises(ValueError, match="different settings"):
        evaluate_tasks(model, tok, items, batch_size=3, checkpoint=ckpt, delimiter="\n")


def test_quantized_model_scores_close_to_reference(model, tok):
    items = random_items(8, random.Random(1))
    q = pq.quantize_model(copy.deepcopy(model), "int8", progress=False)
    ref = evaluate_tasks(model, tok, items)
    cand = evaluate_tasks(q, tok, items)
    for a, b in zip(ref.items, cand.items):
        assert a["loglik"] == pytest.approx(b["loglik"], rel=0.05, abs=0.05)
    assert cand.settings["model_fingerprint"] != ref.settings["model_fingerprint"]


def test_predictions_hand_case():
    from pyquant.eval.tasks import _predictions

    # acc: most likely choice; acc_norm: per character (lm-eval divides by len(choice), no delimiter)
    assert _predictions([-1.0, -2.9], ["a", "abc"]) == (0, 1)
    assert _predictions([-1.0, -1.0], ["ab", "cd"]) == (0, 0)  # ties: the first choice, as np.argmax
    assert _predictions([-1.0, float("nan")], ["a", "b"]) == (None, None)


def test_shared_prefix_runs_once_and_scores_the_same(model, tok, monkeypatch):
    """Items whose choices share a long context (and choices sharing leading words past it) run the
    shared tokens once through the KV cache: the same log-likelihoods as every choice run whole and
    as the float64 oracle; items with short shared prefixes take the padded batch."""
    import pyquant.eval.tasks as tasks

    rng = random.Random()
    items = random_items(6, rng)
    for i, it in enumerate(items[:4]):
        it["context"] = " ".join(rng.choice(WORDS) for _ in range(12 + 3 * i))
    items[1]["choices"] = ["lazy dog", "lazy fox", "lazy ship"]  # shared past the context too
    items[1]["answer"] = 0
    items[4]["context"] = "hello"  # a short shared prefix: the padded batch
    shared = []
    real = tasks._score_shared
    monkeypatch.setattr(tasks, "_score_shared", lambda *a: shared.extend(a[3]) or real(*a))
    res = evaluate_tasks(model, tok, items, batch_size=3)
    assert len(shared) >= 4 and min(shared) >= tasks.MIN_SHARED_PREFIX
    assert len(set(shared)) > 1  # prefixes of different lengths in one batch: padded cache rows
    n = len(shared)
    whole = evaluate_tasks(model, tok, items, batch_size=3, share_prefix=False)
    assert len(shared) == n  # share_prefix=False never takes the shared path
    cut = evaluate_tasks(model, tok, items, batch_size=2, max_length=12)  # inputs cut from the left
    cut_whole = evaluate_tasks(model, tok, items, batch_size=2, max_length=12, share_prefix=False)
    for it, a, b in zip(items, res.items, whole.items):
        assert a["loglik"] == pytest.approx(b["loglik"], rel=1e-5, abs=1e-4)
        want = [oracle_loglik(model, tok, it["context"], c) for c in it["choices"]]
        assert a["loglik"] == pytest.approx(want, rel=1e-5, abs=1e-4)
    for a, b in zip(cut.items, cut_whole.items):
        assert a["loglik"] == pytest.approx(b["loglik"], rel=1e-5, abs=1e-4)


def _long_context_items(rng, n=5):
    """Items whose choices share long contexts of different lengths (all take the shared path
    where the architecture allows it), one with choices that share a word past the context."""
    items = random_items(n, rng)
    for i, it in enumerate(items):
        it["context"] = " ".join(rng.choice(WORDS) for _ in range(10 + 3 * i))
    items[1]["choices"], items[1]["answer"] = ["lazy dog", "lazy fox", "lazy ship"], 0
    return items


def _spy_shared(monkeypatch):
    import pyquant.eval.tasks as tasks

    calls = []
    real = tasks._score_shared
    monkeypatch.setattr(tasks, "_score_shared", lambda *a: calls.append(a[3]) or real(*a))
    return calls


@pytest.mark.parametrize("model_type", sorted(pq.eval.tasks.SHARED_PREFIX_MODEL_TYPES))
def test_shared_prefix_architectures_score_as_whole(model_type, tok, monkeypatch):
    """Every architecture allowed to share prefixes (a tiny random model of each) takes the shared
    path and scores what running every choice whole scores, and the unpadded float64 oracle."""
    model = make_arch_model(model_type, tok)
    items = _long_context_items(random.Random(len(model_type)))
    calls = _spy_shared(monkeypatch)
    shared = evaluate_tasks(model, tok, items, batch_size=3)
    assert calls, f"{model_type}: the shared path was not taken"
    whole = evaluate_tasks(model, tok, items, batch_size=3, share_prefix=False)
    for it, a, b in zip(items, shared.items, whole.items):
        assert a["loglik"] == pytest.approx(b["loglik"], rel=1e-5, abs=1e-4), model_type
    it = items[-1]
    want = [oracle_loglik(model, tok, it["context"], c) for c in it["choices"]]
    assert shared.items[-1]["loglik"] == pytest.approx(want, rel=1e-5, abs=1e-4), model_type


@pytest.mark.parametrize("model_type,span", [("mistral", "sliding_window"), ("phi3", "sliding_window"),
                                             ("gemma2", "sliding_window"), ("gemma3_text", "sliding_window"),
                                             ("cohere2", "sliding_window"), ("gpt_oss", "sliding_window"),
                                             ("llama4_text", "attention_chunk_size")])
def test_windowed_architectures_share_only_batches_inside_the_window(model_type, span, tok, monkeypatch):
    """Sliding windows and attention chunks mask by key index, which a padded shared prefix shifts:
    with a 16-token span (shorter than these items) the items run whole and match the unpadded
    oracle; forcing the shared path shows why (whole nats off). With the architecture's own span
    (longer than the items) the shared path runs: test_shared_prefix_architectures_score_as_whole."""
    import pyquant.eval.tasks as tasks

    model = make_arch_model(model_type, tok, **{span: 16})
    assert tasks.shares_prefixes(model) and tasks.index_window(model) == 16
    _runs_whole_and_would_miss_shared(model, tok, monkeypatch,
                                      lambda: monkeypatch.setattr(tasks, "index_window", lambda m: None))


def _runs_whole_and_would_miss_shared(model, tok, monkeypatch, force_sharing):
    """evaluate_tasks runs the long-context items whole, matching the unpadded oracle; after
    force_sharing() it takes the shared path and misses by more than 0.1 nats."""
    items = _long_context_items(random.Random(7))
    calls = _spy_shared(monkeypatch)
    res = evaluate_tasks(model, tok, items, batch_size=3)
    assert not calls
    for it, got in zip(items, res.items):
        want = [oracle_loglik(model, tok, it["context"], c) for c in it["choices"]]
        assert got["loglik"] == pytest.approx(want, rel=1e-5, abs=1e-4)
    force_sharing()
    forced = evaluate_tasks(model, tok, items, batch_size=3)
    assert calls
    assert max(abs(a - b) for x, y in zip(forced.items, res.items) for a, b in zip(x["loglik"], y["loglik"])) > 0.1


@pytest.mark.parametrize("model_type", ["mpt"])
def test_architectures_outside_the_list_run_whole(model_type, tok, monkeypatch):
    """MPT (ALiBi by key index) mis-scores a shared, padded prefix; it runs every choice whole,
    which matches the unpadded oracle. (Forcing the shared path on it shows why: a nat off.)"""
    import pyquant.eval.tasks as tasks

    model = make_arch_model(model_type, tok)
    assert not tasks.shares_prefixes(model)
    _runs_whole_and_would_miss_shared(model, tok, monkeypatch,
                                      lambda: monkeypatch.setattr(tasks, "shares_prefixes", lambda m: True))


@pytest.mark.parametrize("model_type", ["gemma2", "phi", "gptj", "codegen"])
def test_heads_with_a_bias_or_a_soft_cap_score_as_the_model(model_type, tok, monkeypatch):
    """Gemma 2 soft-caps its logits (here at 3, where the cap bends them) and Phi, GPT-J and CodeGen
    add an LM-head bias (here random): the streamed scores match the model's own log-softmax (the
    unpadded float64 oracle), and scoring the bare head instead misses by far."""
    import pyquant.models

    model = make_arch_model(model_type, tok, **({"final_logit_softcapping": 3.0} if model_type == "gemma2" else {}))
    head = model.get_output_embeddings()
    if head.bias is not None:
        torch.manual_seed(1)
        head.bias.data.normal_(0.0, 1.0)
    items = _long_context_items(random.Random(3))[:2]
    res = evaluate_tasks(model, tok, items)
    for it, got in zip(items, res.items):
        want = [oracle_loglik(model, tok, it["context"], c) for c in it["choices"]]
        assert got["loglik"] == pytest.approx(want, rel=1e-5, abs=1e-4), model_type
    monkeypatch.setattr(pyquant.eval.tasks, "lm_head", lambda m: pyquant.models.lm_head(m).weight)
    bare = evaluate_tasks(model, tok, items)
    assert max(abs(a - b) for x, y in zip(bare.items, res.items) for a, b in zip(x["loglik"], y["loglik"])) > 0.5


def test_tiny_architectures_cover_the_shared_list():
    assert pq.eval.tasks.SHARED_PREFIX_MODEL_TYPES <= set(TINY_ARCHS)
