"""quantize_model on tiny random Llamas: placement of specs, skip/overrides patterns, tied heads,
logits vs a float64 model with the dequantized weights, greedy generation across backends."""
import copy
import os

import pytest
import torch
from torch import nn

import pyquant as pq
from pyquant.quant.linear import QuantLinear, use_backend
from pyquant.quant.model import name_matches
from tinymodels import assert_logits_match, random_ids, tiny_llama

BACKENDS = pq.ops.available_backends("qmatmul", "cpu")
# Generation runs ~50 small matmuls per token: too slow for the Triton *interpreter* (its kernel is
# still checked here once per layer by the logits test, and at every shape by its own tests).
GEN_BACKENDS = [b for b in BACKENDS if not (b == "triton" and os.environ.get("TRITON_INTERPRET") == "1")]


def linear_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, QuantLinear))]


def test_name_matching_rules():
    assert name_matches("model.layers.0.mlp.down_proj", "down_proj")  # substring
    assert name_matches("model.layers.0.mlp.down_proj", "*down_proj")  # glob
    assert not name_matches("model.layers.0.mlp.down_proj", "down_proj*x")
    assert name_matches("model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.[qk]_proj")
    assert not name_matches("model.layers.1.self_attn.v_proj", "model.layers.1.self_attn.[qk]_proj")


def test_skip_and_overrides_land_on_the_right_layers(llama):
    names = linear_names(llama)
    pq.quantize_model(llama, "int4-g32", skip=("lm_head", "model.layers.1.self_attn.[qk]_proj"),
                      overrides={"*down_proj": "int8", "layers.0.self_attn": "int4-g64-sym"})
    cfg = llama.pyquant_config
    for n in names:
        m = llama.get_submodule(n)
        if n == "lm_head" or n in ("model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj"):
            assert type(m) is nn.Linear and n not in cfg["layers"], n
            continue
        want = "int8" if n.endswith("down_proj") else "int4-g64-sym" if "layers.0.self_attn" in n else "int4-g32"
        assert isinstance(m, QuantLinear) and str(m.spec) == want, (n, m)
        assert cfg["layers"][n] == {"spec": want, "shape": [m.out_features, m.in_features], "bias": False,
                                  "method": "rtn"}
    assert cfg["default_spec"] == "int4-g32" and cfg["overrides"]["*down_proj"] == "int8"
    assert len(cfg["layers"]) == len(names) - 3


def test_first_matching_override_wins(llama):
    pq.quantize_model(llama, "int8", overrides={"mlp.up_proj": "int4-g32", "mlp": "int4-g128"})
    assert str(llama.model.layers[0].mlp.up_proj.spec) == "int4-g32"
    assert str(llama.model.layers[0].mlp.gate_proj.spec) == "int4-g128"
    assert str(llama.model.layers[0].self_attn.q_proj.spec) == "int8"


def test_logits_match_float64_model_with_dequantized_weights(llama):
    ref = copy.deepcopy(llama).double()
    pq.quantize_model(llama, "int4-g32", skip=(), overrides={"*down_proj": "int8"})
    with torch.no_grad():
        for name, q in llama.named_modules():
            if isinstance(q, QuantLinear):
                ref.get_submodule(name).weight.copy_(q.qw.dequantize(torch.float64))
    ids = random_ids(2, 9)
    with torch.no_grad():
        want = ref(ids).logits
    assert_logits_match(llama, ids, want, BACKENDS)


def test_tied_head_quantized_leaves_embedding_alone(tied_llama):
    emb = tied_llama.model.embed_tokens.weight
    assert tied_llama.lm_head.weight is emb
    before = emb.detach().clone()
    pq.quantize_model(tied_llama, "int4-g32", skip=())
    assert isinstance(tied_llama.lm_head, QuantLinear)
    assert tied_llama.config.tie_word_embeddings is False
    tied_llama.tie_weights()  # transformers must not re-tie the quantized head
    assert isinstance(tied_llama.lm_head, QuantLinear)
    assert torch.equal(tied_llama.model.embed_tokens.weight, before)
    err = (tied_llama.lm_head.qw.dequantize() - before).abs().max()
    assert 0 < err < 0.1 * before.abs().max()


def test_tied_head_skipped_stays_tied(tied_llama):
    pq.quantize_model(tied_llama, "int8")
    assert tied_llama.lm_head.weight is tied_llama.model.embed_tokens.weight
    assert tied_llama.config.tie_word_embeddings is True


def test_bad_input_and_warnings(llama):
    with pytest.raises(ValueError, match="cannot parse"):
        pq.quantize_model(llama, "int3")
    with pytest.raises(ValueError, match="group size"):
        pq.quantize_model(llama, "int8", overrides={"down_proj": "int4-g100"})
    with pytest.raises(ValueError, match="dict"):
        pq.quantize_model(llama, "int8", overrides=[("down_proj", "int8")])
    with pytest.raises(ValueError, match="non-empty"):
        pq.quantize_model(llama, "int8", skip=("",))
    with pytest.raises(ValueError, match="nn.Module"):
        pq.quantize_model("model", "int8")
    assert not any(isinstance(m, QuantLinear) for m in llama.modules())  # nothing half-done
    with pytest.warns(UserWarning, match="matched no"):
        pq.quantize_model(llama, "int8", skip=("lm_head", "no_such_layer"))


def test_progress_bar(llama, capsys):
    pq.quantize_model(llama, "int8", progress=True)
    assert "layer" in capsys.readouterr().err


@pytest.mark.parametrize("scheme,down", [("int4-g32", "int8"), ("int4-g32-a8", "int8-a8")])
def test_greedy_generation_identical_across_backends(scheme, down):
    """A quantized tiny Llama generates the same greedy tokens through every available backend
    (reference, and the C++ "cpu" one once it is built); with -a8, the CPU kernel's integer
    decode path and the reference's quantize-then-matmul agree too."""
    model = tiny_llama(std=0.3)
    pq.quantize_model(model, scheme, overrides={"*down_proj": down})
    ids = random_ids(2, 6)
    outs = {}
    for backend in GEN_BACKENDS:
        with use_backend(backend), torch.no_grad():
            outs[backend] = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10,
                                           do_sample=False, pad_token_id=0)
    assert "reference" in outs
    if "cpu" in pq.ops._registry._REGISTRY.get("qmatmul", {}):
        assert len(outs) >= 2, f"the cpu backend is registered but unavailable: {pq.ops.backend_info()['qmatmul']}"
    for backend, out in outs.items():
        assert out.shape == (2, 16)
        assert torch.equal(out, outs["reference"]), backend


def test_quantized_model_compiles_as_one_graph():
    """torch.compile(fullgraph=True) of a quantized Llama (every linear a QuantLinear, INT4 and
    -a8 INT8) traces the custom op with no graph break and gives the eager logits bit for bit, also
    when compiled before any eager call has resolved a backend (the probes are not traceable)."""
    model = pq.quantize_model(tiny_llama(std=0.3), "int4-g32", overrides={"*down_proj": "int8-a8"})
    ids = random_ids(2, 7)
    pq.ops._registry._RESOLVED.clear()
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True, backend="eager")(ids, use_cache=False).logits
        eager = model(ids, use_cache=False).logits
    assert torch.equal(compiled, eager)


def test_gpt2_conv1d_layers():
    """GPT-2 keeps its projections in transformers' Conv1D ([in, out] weights): they are quantized too."""
    from tinymodels import tiny_gpt2

    model = tiny_gpt2()
    ref = copy.deepcopy(model).double()
    pq.quantize_model(model, "int8", overrides={"*c_fc": "int4-g32"})
    assert str(model.transformer.h[0].mlp.c_fc.spec) == "int4-g32"
    assert isinstance(model.transformer.h[1].attn.c_attn, QuantLinear) and type(model.lm_head) is nn.Linear
    with torch.no_grad():
        for name, q in model.named_modules():
            if isinstance(q, QuantLinear):
                ref.get_submodule(name).weight.copy_(q.qw.dequantize(torch.float64).T)
        ids = random_ids(2, 9)
        want = ref(ids).logits
        torch.testing.assert_close(model(ids).logits.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_bfloat16_model(llama):
    ids = random_ids(2, 9)
    pq.quantize_model(llama, "int4-g32")
    with torch.no_grad():
        want = llama(ids).logits
        llama.to(torch.bfloat16)
        assert llama.model.layers[0].mlp.up_proj.scales.dtype == torch.float32
        got = llama(ids).logits
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() < 0.1 * want.abs().max()
