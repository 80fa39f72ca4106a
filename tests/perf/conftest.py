"""Tiny random-initialized Llama models for the perf tests (no hub, no demo model)."""
import pytest
import torch


def tiny_llama(seed=0, hidden=64, inter=128, layers=2, vocab=300, ctx=256):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=ctx,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def tiny_model():
    return tiny_llama()


@pytest.fixture
def make_llama():
    """The tiny_llama factory, for tests that need other sizes or several models."""
    return tiny_llama
