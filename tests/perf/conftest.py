"""Tiny random-initialized Llama models for the perf tests (no hub, no demo model)."""
import helpers
import pytest


def tiny_llama(seed=0, **kw):
    """helpers.tiny_llama with seed 0 and transformers' default init (std 0.02)."""
    return helpers.tiny_llama(seed, **{"std": 0.02, **kw})


@pytest.fixture
def tiny_model():
    return tiny_llama()


@pytest.fixture
def make_llama():
    """The tiny_llama factory, for tests that need other sizes or several models."""
    return tiny_llama
