"""Fixtures of the eval tests (the helpers live in evalkit.py)."""
import pytest
import torch

from evalkit import make_model, make_tokenizer


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """The tiny models run fastest on one thread (several threads spin-wait on a shared 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="session")
def model(tok):
    return make_model(tok)


@pytest.fixture(scope="session")
def prompts():
    return ["The quick brown", "hello", "Perplexity measures how", "A quantized model is good"]


@pytest.fixture(scope="session")
def store(model, tok, prompts):
    """A reference collected from the tiny model: 4 prompts, 8 new tokens, N=8, batches of 2."""
    from pyquant.eval.collect import collect_reference

    return collect_reference(model, tok, prompts, max_new_tokens=8, top_n=8, batch_size=2)
