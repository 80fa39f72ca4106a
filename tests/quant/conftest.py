"""Fixtures for the quant tests: fresh tiny random models (see tinymodels.py)."""
import pytest

from tinymodels import tiny_llama, tiny_tokenizer


@pytest.fixture
def llama():
    """A fresh tiny random Llama with untied embeddings."""
    return tiny_llama()


@pytest.fixture
def tied_llama():
    """A fresh tiny random Llama whose lm_head is tied to embed_tokens."""
    return tiny_llama(tie=True)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()
