"""End to end on the bundled SmolLM2-135M (slow): reference, compare FP32 / INT8 / INT4-g128,
perplexity against lm-evaluation-harness."""
import copy

import pytest

import pyquant as pq

pytestmark = pytest.mark.slow

PROMPTS = [[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
           "The three primary colors are",
           [{"role": "user", "content": "Write a haiku about autumn leaves."}]]


@pytest.fixture(scope="module")
def demo():
    return pq.load_model("demo")


@pytest.fixture(scope="module")
def demo_store(demo):
    model, tok = demo
    return pq.collect_reference(model, tok, PROMPTS, max_new_tokens=24, top_n=16, batch_size=3)


def test_compare_fp32_int8_int4(demo, demo_store):
    model, tok = demo
    assert len(demo_store) == 3 and demo_store.top_n == 16
    kl = {}
    for name in ("fp32", "int8", "int4-g128"):
        cand = model if name == "fp32" else pq.quantize_model(copy.deepcopy(model), name)
        r = pq.compare(cand, demo_store, tokenizer=tok)
        kl[name] = r.stats["all"]["kl_mean"]
        assert r.stats["all"]["nonfinite"] == 0
        if name == "fp32":
            assert r.stats["all"]["top1_agree"] == 1.0 and kl[name] < 1e-5
    assert kl["int4-g128"] > kl["int8"] > kl["fp32"]


def test_perplexity_matches_lm_eval(demo):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = demo
    text = ("Quantization stores the weights of a neural network with fewer bits. Round-to-nearest maps every "
            "weight to the closest level of a grid; group-wise scales keep the error small. ") * 3
    ours = pq.perplexity(model, tok, [text], context=64, batch_size=2)
    lm = HFLM(pretrained=model, tokenizer=tok, max_length=64, batch_size=1, add_bos_token=False)
    (theirs,) = lm.loglikelihood_rolling([Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)],
                                         disable_tqdm=True)
    assert ours.loglikelihood == pytest.approx(theirs, rel=1e-4)
