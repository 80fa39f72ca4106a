"""Mixture-of-experts weights stored as 3-D parameters (transformers 5's Mixtral, Qwen3-MoE,
OLMoE, gpt-oss experts): quantize_model quantizes them (QuantExpertStack), the "pyquant" experts
forward matches transformers' own forward over the dequantized weights, and they save and load."""
import copy

import pytest
import torch

import pyquant as pq
import pyquant.models  # noqa: F401  (pq.models)
from pyquant.quant.experts import QuantExpertStack, experts_forward
from tinymodels import assert_logits_match, random_ids

BACKENDS = ["reference"] + (["cpu"] if "cpu" in pq.ops.available_backends("qmatmul", "cpu") else [])
ARCHS = {  # model type -> (config class, model class, config keywords)
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=4, num_experts_per_tok=2)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16)),
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM",  # transposed [E, in, out], biases, its own gate
                dict(num_local_experts=4, num_experts_per_tok=2, head_dim=16)),
    "phimoe": ("PhimoeConfig", "PhimoeForCausalLM",  # its router is an nn.Linear returning 3 tensors: kept
               dict(num_local_experts=4, num_experts_per_tok=2)),
    "llama4_text": ("Llama4TextConfig", "Llama4ForCausalLM",  # experts on pre-weighted copies of every token
                    dict(num_local_experts=4, head_dim=16, intermediate_size_mlp=128)),
    "jetmoe": ("JetMoeConfig", "JetMoeForCausalLM",  # experts called another way: kept, with a warning
               dict(num_local_experts=4, num_experts_per_tok=2, kv_channels=16)),
    "hunyuan_v1_moe": ("HunYuanMoEV1Config", "HunYuanMoEV1ForCausalLM",  # an nn.Linear router whose .weight it reads
                       dict(num_experts=4, moe_topk=2, head_dim=16)),
}


def tiny_moe(model_type: str):
    import transformers

    cfg_name, model_name, kw = ARCHS[model_type]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_name)(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                          bos_token_id=1, eos_token_id=2, pad_token_id=0, **kw)
    cfg.initializer_range = 0.2
    model = getattr(transformers, model_name)(cfg).eval()
    with torch.no_grad():  # biases start at zero: make them count
        for n, p in model.named_parameters():
            if n.endswith("_bias"):
                p.normal_(0.0, 0.2)
    return model


def _stacks(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantExpertStack)}


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe", "gpt_oss", "phimoe", "llama4_text"])
def test_experts_are_quantized_and_match_transformers_forward(model_type):
    """Every 3-D expert weight becomes a QuantExpertStack; the logits equal those of the float64
    model whose experts hold the dequantized weights, run by transformers' own experts forward."""
    model = tiny_moe(model_type)
    ref = copy.deepcopy(model).double()
    ref.config._experts_implementation = "eager"  # transformers' own loop (its grouped_mm takes no float64)
    before = pq.models.model_description(model)["weight_bytes"]
    pq.quantize_model(model, "int4-g32", skip=("lm_head",), overrides={"*experts.down_proj": "int8"})
    stacks = _stacks(model)
    assert len(stacks) == 4  # 2 layers x (gate_up_proj, down_proj)
    assert not [n for n, p in model.named_parameters() if p.dim() == 3], "a 3-D expert weight stayed full precision"
    assert all(str(s.expert(0).spec) == ("int8" if n.endswith("down_proj") else "int4-g32") for n, s in stacks.items())
    assert pq.models.model_description(model)["weight_bytes"] < 0.5 * before
    layers = model.pyquant_config["layers"]
    assert all(layers[n]["experts"] == 4 for n in stacks)
    with torch.no_grad():
        for name, q in model.named_modules():  # the attention's QuantLinear layers
            if isinstance(q, pq.QuantLinear) and name.rpartition(".")[0] not in stacks:
                ref.get_submodule(name).weight.copy_(q.qw.dequantize(torch.float64))
        for name, stack in stacks.items():
            mod_name, _, pname = name.rpartition(".")
            w = torch.stack([stack[e] for e in range(len(stack))]).double()
            assert w.shape == getattr(ref.get_submodule(mod_name), pname).shape
            getattr(ref.get_submodule(mod_name), pname).copy_(w)
    ids = random_ids(2, 9)
    with torch.no_grad():
        want = ref(ids).logits
    assert_logits_match(model, ids, want, BACKENDS)
    # the stack indexed by a tensor of ids (batched implementations) gives the same weights
    stack = next(iter(stacks.values()))
    torch.testing.assert_close(stack[torch.tensor([2, 0])], torch.stack([stack[2], stack[0]]))


def test_full_precision_experts_through_the_pyquant_forward():
    """The "pyquant" experts forward also runs experts left in full precision (skipped by a pattern)
    and then equals transformers' eager forward."""
    model = tiny_moe("mixtral")
    ref = copy.deepcopy(model)
    pq.quantize_model(model, "int8", skip=("lm_head", "layers.1.mlp.experts"))
    assert model.model.layers[1].mlp.experts.config._experts_implementation == "pyquant"
    assert isinstance(model.model.layers[1].mlp.experts.down_proj, torch.nn.Parameter)
    ex, rx = model.model.layers[1].mlp.experts, ref.model.layers[1].mlp.experts
    h = torch.randn(7, 64)
    idx = torch.randint(0, 4, (7, 2))
    wts = torch.rand(7, 2)
    torch.testing.assert_close(experts_forward(ex, h, idx, wts), type(rx).forward.__wrapped__(rx, h, idx, wts),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", ["mixtral", "gpt_oss", "llama4_text"])
def test_quantized_experts_save_load_and_generate(model_type, tmp_path):
    model = tiny_moe(model_type)
    pq.quantize_model(model, "int4-g32")
    pq.save_quantized(model, tmp_path / "q")
    loaded = pq.load_quantized(tmp_path / "q")
    assert set(_stacks(loaded)) == set(_stacks(model))
    ids = random_ids(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
        a = model.generate(ids, max_new_tokens=5, do_sample=False)
        b = loaded.generate(ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(a, b) and a.shape[1] == 14


@pytest.mark.parametrize("model_type", ["mixtral", "gpt_oss"])
def test_gptq_calibrates_each_expert_on_its_routed_tokens(model_type, monkeypatch):
    """GPTQ gives each expert the H of the tokens routed to it (gate_up: the tokens; down_proj:
    their gated activations), checked against H built by hand from transformers' own routing; an
    expert that no calibration token reaches is rounded to nearest; and GPTQ's experts reproduce
    the calibration layer outputs better than RTN's."""
    import pyquant.quant.gptq as gptq

    model = tiny_moe(model_type)
    rtn = pq.quantize_model(copy.deepcopy(model), "int4-g32", skip=("lm_head",))
    calib = [torch.randint(3, 300, (48,)) for _ in range(3)]
    seen = {}
    real = gptq._ExpertHessians.take

    def spy(self, name):
        hs = real(self, name)
        seen[name] = {e: h.clone() for e, h in hs.items()}
        return hs

    monkeypatch.setattr(gptq._ExpertHessians, "take", spy)
    experts = model.model.layers[0].mlp.experts
    inputs = {}
    handle = experts.register_forward_pre_hook(lambda m, a: inputs.setdefault("x", []).append((a[0], a[1])))
    with torch.no_grad():
        for s in calib:
            model(s[None], use_cache=False)
    handle.remove()
    ref_experts = copy.deepcopy(experts)
    pq.quantize_model(model, "int4-g32", skip=("lm_head",), method="gptq", calibration=calib, progress=False,
                      act_order="static")
    stats = model.pyquant_config["gptq"]
    assert len(_stacks(model)) == 4 and {v["method"] for v in model.pyquant_config["layers"].values()} == {"gptq"}
    # H of layer 0's experts, by hand from the recorded routing (layer 0 sees the full-precision inputs)
    name = "model.layers.0.mlp.experts"
    want_gu, want_d = {}, {}
    with torch.no_grad():
        for x, idx in inputs["x"]:
            for e in range(4):
                rows = (idx == e).any(-1).nonzero().squeeze(1)
                if len(rows):
                    xe = x[rows].float()
                    want_gu[e] = want_gu.get(e, 0) + xe.T @ xe
                    he = ref_experts._apply_gate(torch.nn.functional.linear(
                        xe, ref_experts.gate_up_proj[e].t() if ref_experts.is_transposed else ref_experts.gate_up_proj[e],
                        ref_experts.gate_up_proj_bias[e] if ref_experts.has_bias else None))
                    want_d[e] = want_d.get(e, 0) + he.T @ he
    got_gu, got_d = seen[name + ".gate_up_proj"], seen[name + ".down_proj"]
    assert set(got_gu) == set(want_gu) and set(got_d) == set(want_d)
    for e in want_gu:
        torch.testing.assert_close(got_gu[e], want_gu[e], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(got_d[e], want_d[e], rtol=1e-4, atol=1e-3)
    assert stats["experts_rtn"] == sum(4 - len(h) for h in seen.values())
    # static act-order reaches the experts too: each is gptq_quantize_weight of its H
    from pyquant.quant.experts import expert_weights

    for e, h in got_gu.items():
        want = gptq.gptq_quantize_weight(expert_weights(ref_experts, "gate_up_proj")[e], h, "int4-g32",
                                         perm=gptq.act_order_perm(h), static_groups=True)
        got = model.model.layers[0].mlp.experts.gate_up_proj.expert(e)
        assert got.in_perm is None and torch.equal(got.qw.codes(), want.codes())
    # on the calibration inputs, layer 0's GPTQ experts land nearer the full-precision outputs than RTN's
    x, idx = inputs["x"][0]
    w = torch.rand(idx.shape)
    with torch.no_grad():
        exact = type(ref_experts).forward.__wrapped__(ref_experts, x, idx, w)
        err_gptq = (experts_forward(model.model.layers[0].mlp.experts, x, idx, w) - exact).norm()
        err_rtn = (experts_forward(rtn.model.layers[0].mlp.experts, x, idx, w) - exact).norm()
    assert err_gptq < err_rtn


def test_llama4_experts_run_each_expert_on_its_routed_rows_only():
    """Llama 4's experts see every token once per expert, scaled by its router score: the quantized
    forward runs only the nonzero rows, and equals the dense product over the dequantized weights
    (whose zero rows give zeros) for mixed inputs: all-zero experts, all-zero tokens, live rows."""
    model = tiny_moe("llama4_text")
    experts = model.model.layers[0].feed_forward.experts
    ref = copy.deepcopy(experts).double()
    pq.quantize_model(model, "int4-g32")
    for pname in ("gate_up_proj", "down_proj"):
        stack = getattr(experts, pname)
        assert isinstance(stack, QuantExpertStack) and stack.transposed
        with torch.no_grad():
            getattr(ref, pname).copy_(torch.stack([stack[e] for e in range(4)]).double())
    x = torch.randn(4, 5, 64)
    x[1] = 0  # an expert no token chose
    x[:, 3] = 0  # a token routed nowhere
    x[2, :2] = 0
    calls = []
    handle = experts.gate_up_proj.expert(2).register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    with torch.no_grad():
        got = experts(x.reshape(-1, 64))
    handle.remove()
    want = ref(x.reshape(-1, 64).double())
    assert got.shape == (20, 64) and calls == [2]  # expert 2: tokens 2 and 4 only
    assert torch.equal(got.view(4, 5, 64)[1], torch.zeros(5, 64)) and not got.view(4, 5, 64)[:, 3].any()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def test_llama4_gptq_calibrates_each_expert_on_its_scaled_tokens(monkeypatch):
    """Llama 4: GPTQ's H for each expert is built from the tokens its router chose, scaled by their
    router scores (what its weights multiply), checked against H built from the router's own scores."""
    import pyquant.quant.gptq as gptq

    model = tiny_moe("llama4_text")
    calib = [torch.randint(3, 300, (40,)) for _ in range(2)]
    seen = {}
    real = gptq._ExpertHessians.take
    monkeypatch.setattr(gptq._ExpertHessians, "take",
                        lambda self, name: seen.setdefault(name, {e: h.clone() for e, h in real(self, name).items()}))
    moe = model.model.layers[0].feed_forward
    rec = []
    h1 = moe.register_forward_pre_hook(lambda m, a: rec.append([a[0].reshape(-1, 64)]))
    h2 = moe.router.register_forward_hook(lambda m, a, out: rec[-1].append(out[0]))
    with torch.no_grad():
        for s in calib:
            model(s[None], use_cache=False)
    h1.remove()
    h2.remove()
    pq.quantize_model(model, "int4-g32", method="gptq", calibration=calib, progress=False)
    want = {}
    for x, scores in rec:  # scores [T, E]: sigmoid of the chosen logits, 0 elsewhere
        for e in range(4):
            xe = x[scores[:, e] > 0] * scores[scores[:, e] > 0, e, None]
            if len(xe):
                want[e] = want.get(e, 0) + xe.T.double() @ xe.double()
    got = seen["model.layers.0.feed_forward.experts.gate_up_proj"]
    assert set(got) == set(want) and len(want) >= 2
    for e in want:
        torch.testing.assert_close(got[e].double(), want[e], rtol=1e-4, atol=1e-4)
    assert len(_stacks(model)) == 4


def test_unsupported_3d_weights_stay_full_precision_with_a_warning():
    """JetMoE's experts (3-D weights in its own modules, called another way) are left alone, with a
    warning, and the model still runs."""
    model = tiny_moe("jetmoe")
    ids = random_ids(2, 9)
    with torch.no_grad():
        want = model(ids).logits
    with pytest.warns(UserWarning, match=r"weight\(s\) of 3 or more dimensions .* stay in full precision"):
        pq.quantize_model(model, "int8")
    assert not _stacks(model)
    with torch.no_grad():
        got = model(ids).logits
    assert torch.isfinite(got).all() and got.shape == want.shape


@pytest.mark.parametrize("model_type, routers", [
    ("hunyuan_v1_moe", ["model.layers.0.mlp.gate.wg", "model.layers.1.mlp.gate.wg"]),
    ("jetmoe", ["model.layers.0.self_attention.experts.router.layer", "model.layers.0.mlp.router.layer",
                "model.layers.1.self_attention.experts.router.layer", "model.layers.1.mlp.router.layer"]),
    ("mixtral", []),  # its router is a parameter, not an nn.Linear
])
def test_routers_stay_full_precision_unless_asked(model_type, routers):
    from pyquant.quant.model import router_layer_names

    model = tiny_moe(model_type)
    assert sorted(router_layer_names(model)) == sorted(routers)
    ids = random_ids(2, 9)
    quantized = pq.quantize_model(copy.deepcopy(model), "int8", skip=("lm_head",))
    assert sorted(quantized.pyquant_config["routers_kept"]) == sorted(routers)
    assert sorted(pq.models.model_description(quantized)["quant"].get("routers_kept", [])) == sorted(routers)
    assert all(type(quantized.get_submodule(n)) is torch.nn.Linear for n in routers)
    assert not set(routers) & set(quantized.pyquant_config["layers"])
    with torch.no_grad():
        assert torch.isfinite(quantized(ids).logits).all()
    if not routers:
        return
    with pytest.warns(UserWarning, match=r"matched only mixture-of-experts routers"):
        pq.quantize_model(copy.deepcopy(model), "int8", overrides={routers[0]: "int4-g32"})
    everything = pq.quantize_model(copy.deepcopy(model), "int8", keep_routers=False)
    assert all(isinstance(everything.get_submodule(n), pq.QuantLinear) for n in routers)
    assert everything.pyquant_config["routers_kept"] == []
    if model_type == "hunyuan_v1_moe":  # reads gate.wg.weight: the error says why
        with pytest.raises(AttributeError, match=r"QuantLinear has no .weight.*kept in full precision"):
            everything(ids)


def test_dense_models_have_no_routers():
    from pyquant.quant.model import router_layer_names
    from tinymodels import tiny_llama

    assert router_layer_names(tiny_llama()) == []


def test_linear_subclasses_with_their_own_forward_are_not_replaced():
    model = tiny_moe("phimoe")
    pq.quantize_model(model, "int8")
    router = model.model.layers[0].mlp.router
    assert isinstance(router, torch.nn.Linear) and not isinstance(router, pq.QuantLinear)
    assert "model.layers.0.mlp.router" not in model.pyquant_config["layers"]


@pytest.mark.parametrize("model_type", ["mixtral", "gpt_oss", "llama4_text"])
def test_quantized_experts_compile_as_one_graph(model_type):
    """torch.compile(fullgraph=True) of a quantized MoE (routing sorted by expert, one grouped op per
    projection: no shape depends on the routing) gives the eager logits bit for bit; gpt-oss has
    expert biases, Llama 4 pre-weighted experts."""
    model = pq.quantize_model(tiny_moe(model_type), "int4-g32")
    ids = random_ids(2, 9)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True, backend="eager")(ids, use_cache=False).logits
        eager = model(ids, use_cache=False).logits
    assert torch.equal(compiled, eager)
