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


# Tiny configurations of Hugging Face causal-LM architectures (model_type -> config class, model
# class, config keywords): 64 wide, 2 layers, 4 heads (2 KV heads where the architecture has them).
_LLAMA_LIKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2)
_GPT2_LIKE = dict(n_embd=64, n_layer=2, n_head=4, n_positions=256)
_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
# One tiny configuration for the newer Llama-like types (keys a type does not use are ignored),
# and one for the multi-head latent attention of DeepSeek V2/V3 and MiniCPM3.
_GENERIC = dict(_LLAMA_LIKE, **_MOE, head_dim=16, num_local_experts=4, n_routed_experts=4, n_shared_experts=1,
                max_position_embeddings=512)
_MLA = dict(_LLAMA_LIKE, num_key_value_heads=4, moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2,
            kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
            first_k_dense_replace=1, n_group=1, topk_group=1, max_position_embeddings=512)
TINY_ARCHS = {
    "apertus": ("ApertusConfig", "ApertusForCausalLM", _GENERIC),
    "arcee": ("ArceeConfig", "ArceeForCausalLM", _GENERIC),
    "bitnet": ("BitNetConfig", "BitNetForCausalLM", _GENERIC),
    "bloom": ("BloomConfig", "BloomForCausalLM", dict(hidden_size=64, n_layer=2, n_head=4)),
    "codegen": ("CodeGenConfig", "CodeGenForCausalLM", dict(_GPT2_LIKE, n_ctx=256, rotary_dim=8)),
    "cohere": ("CohereConfig", "CohereForCausalLM", _GENERIC),
    "cohere2": ("Cohere2Config", "Cohere2ForCausalLM", _GENERIC),
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM", _MLA),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM", _MLA),
    "dots1": ("Dots1Config", "Dots1ForCausalLM", _GENERIC),
    "ernie4_5": ("Ernie4_5Config", "Ernie4_5ForCausalLM", _GENERIC),
    "exaone4": ("Exaone4Config", "Exaone4ForCausalLM", _GENERIC),
    "falcon": ("FalconConfig", "FalconForCausalLM", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(_LLAMA_LIKE, head_dim=16)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(_LLAMA_LIKE, head_dim=16)),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(_LLAMA_LIKE, head_dim=16)),
    "glm": ("GlmConfig", "GlmForCausalLM", dict(_LLAMA_LIKE, head_dim=16)),
    "glm4": ("Glm4Config", "Glm4ForCausalLM", _GENERIC),
    "glm4_moe": ("Glm4MoeConfig", "Glm4MoeForCausalLM", _GENERIC),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", _GPT2_LIKE),
    "gpt_bigcode": ("GPTBigCodeConfig", "GPTBigCodeForCausalLM", _GPT2_LIKE),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM",
                 dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)),
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM", _GENERIC),
    "gptj": ("GPTJConfig", "GPTJForCausalLM", dict(_GPT2_LIKE, rotary_dim=8)),
    "granite": ("GraniteConfig", "GraniteForCausalLM", _LLAMA_LIKE),
    "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM", _GENERIC),
    "granitemoeshared": ("GraniteMoeSharedConfig", "GraniteMoeSharedForCausalLM", _GENERIC),
    "helium": ("HeliumConfig", "HeliumForCausalLM", _GENERIC),
    "hunyuan_v1_dense": ("HunYuanDenseV1Config", "HunYuanDenseV1ForCausalLM", _GENERIC),
    "jetmoe": ("JetMoeConfig", "JetMoeForCausalLM", _GENERIC),
    "llama": ("LlamaConfig", "LlamaForCausalLM", _LLAMA_LIKE),
    "llama4_text": ("Llama4TextConfig", "Llama4ForCausalLM", _GENERIC),
    "minicpm3": ("MiniCPM3Config", "MiniCPM3ForCausalLM", _MLA),
    "ministral": ("MinistralConfig", "MinistralForCausalLM", _GENERIC),
    "mistral": ("MistralConfig", "MistralForCausalLM", _LLAMA_LIKE),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(_LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2)),
    "mpt": ("MptConfig", "MptForCausalLM", dict(d_model=64, n_layers=2, n_heads=4)),
    "nemotron": ("NemotronConfig", "NemotronForCausalLM", _GENERIC),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", _LLAMA_LIKE),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", _LLAMA_LIKE),
    "olmo3": ("Olmo3Config", "Olmo3ForCausalLM", _GENERIC),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", _GENERIC),
    "opt": ("OPTConfig", "OPTForCausalLM",
            dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=64)),
    "persimmon": ("PersimmonConfig", "PersimmonForCausalLM",
                  dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)),
    "phi": ("PhiConfig", "PhiForCausalLM", dict(_LLAMA_LIKE, num_key_value_heads=4)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", _LLAMA_LIKE),
    "phimoe": ("PhimoeConfig", "PhimoeForCausalLM", dict(_LLAMA_LIKE, num_local_experts=4)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _LLAMA_LIKE),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(_LLAMA_LIKE, **_MOE, shared_expert_intermediate_size=64)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(_LLAMA_LIKE, head_dim=16)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(_LLAMA_LIKE, **_MOE, head_dim=16)),
    "seed_oss": ("SeedOssConfig", "SeedOssForCausalLM", _GENERIC),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", dict(_LLAMA_LIKE, num_hidden_layers=4)),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", _LLAMA_LIKE),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", _LLAMA_LIKE),
    "vaultgemma": ("VaultGemmaConfig", "VaultGemmaForCausalLM", _GENERIC),
}


def make_arch_model(model_type: str, tokenizer, seed: int = 0, std: float = 0.2, **overrides):
    """A tiny random model of architecture ``model_type`` (TINY_ARCHS) over ``tokenizer``'s
    vocabulary, float32, eval mode; ``overrides`` go to its config."""
    import transformers

    cfg_name, model_name, kw = TINY_ARCHS[model_type]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_name)(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                          pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id,
                                          **{**kw, **overrides})
    cfg.initializer_range = std
    return getattr(transformers, model_name)(cfg).eval()
