"""Tiny random-initialized causal LMs and a word-level tokenizer for the quant and models tests
(imported by tests/quant/conftest.py and tests/test_models.py); tiny_llama itself lives in
tests/helpers.py."""
import torch
from helpers import tiny_llama  # noqa: F401  (re-exported)

VOCAB = 300


def tiny_tokenizer(vocab: int = VOCAB):
    """A whitespace word-level tokenizer: <unk>=0 <s>=1 </s>=2, then words w3 .. w{vocab-1}."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<unk>": 0, "<s>": 1, "</s>": 2}
    words.update({f"w{i}": i for i in range(3, vocab)})
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")


def assert_logits_match(model, ids, want: torch.Tensor, backends) -> None:
    """model(ids).logits through each qmatmul backend equals ``want`` (float64) to 1e-4 of its largest."""
    from pyquant.quant.linear import use_backend

    with torch.no_grad():
        for backend in backends:
            with use_backend(backend):
                got = model(ids).logits
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def random_ids(batch: int = 2, length: int = 7, vocab: int = VOCAB) -> torch.Tensor:
    """Random token ids [batch, length] avoiding the special ids 0..2."""
    return torch.randint(3, vocab, (batch, length))


def tiny_gpt2(std: float = 0.2):
    """A 2-layer GPT2LMHeadModel (Conv1D projections stored [in, out], tied head), float32, eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, initializer_range=std,
                     bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(cfg).eval()
