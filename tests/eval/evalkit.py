"""Shared helpers of the eval tests: tiny random Llama models, a tiny byte-level BPE tokenizer,
and the float64 oracle. (A module of its own: importing helpers from `conftest` breaks when
another test directory's conftest was imported first.)"""
import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A quantized model is good enough to ship when its divergence is small.",
    "Perplexity measures how surprised a language model is by a text.",
    "Numbers like 3.14 and 42 appear in text, and so do symbols: #, %, &!",
    "hello world, hello tokens, hello again",
]


def make_tokenizer(bos: bool = False):
    """A ~300-token byte-level BPE tokenizer (eos "<eos>", pad "<pad>", optional bos "<s>" that
    the tokenizer never adds by itself)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<eos>", "<pad>"] + (["<s>"] if bos else [])
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    kw = {"bos_token": "<s>"} if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", **kw)


def make_model(tokenizer, seed: int = 0, layers: int = 2, std: float = 0.2):
    """A tiny random LlamaForCausalLM over ``tokenizer``'s vocabulary (weights N(0, std) so its
    distributions are far from uniform), float32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False, initializer_range=std)
    model = LlamaForCausalLM(cfg).eval()
    return model


def full_logprobs(model, tokens):
    """float64 log-softmax of the model's logits over one sequence: [L, V] (the test oracle)."""
    with torch.no_grad():
        logits = model(torch.as_tensor(tokens)[None]).logits[0]
    return torch.log_softmax(logits.double(), dim=-1)
