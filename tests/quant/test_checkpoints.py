"""GPTQ- and AWQ-format checkpoints (pyquant/quant/checkpoints.py) load into pyquant's formats exactly.

The checkpoints are written here from random "true" tensors (codes, zero-points, fp16 scales,
groups) with the packing spelled out bit by bit, independently of the reader's vectorized unpacking;
the expected weight is scales[g_idx[k], n] * (code[k, n] - zero[g_idx[k], n])."""
import json

import pytest
import torch

import pyquant as pq
from pyquant.quant.checkpoints import convert_awq_layer, convert_compressed_layer, convert_gptq_layer
from tinymodels import random_ids, tiny_llama, tiny_tokenizer


def _pack(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """int32 words, 32/bits values each, value i of a word at bits [bits*i, bits*(i+1)), along ``dim``."""
    per = 32 // bits
    v = values.to(torch.int64)
    if dim == 1:
        v = v.T
    rows, cols = v.shape
    words = torch.zeros(-(-rows // per), cols, dtype=torch.int64)
    for r in range(rows):
        words[r // per] |= v[r] << (bits * (r % per))
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # the bit pattern as int32
    return words.T.contiguous() if dim == 1 else words


def _pack_awq(values: torch.Tensor) -> torch.Tensor:
    """AWQ's GEMM packing along the last dimension: nibble i of word c holds column 8c + [0, 2, 4, 6, 1, 3, 5, 7][i]."""
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    v = values.to(torch.int64)
    words = torch.zeros(v.shape[0], v.shape[1] // 8, dtype=torch.int64)
    for c in range(v.shape[1] // 8):
        for i in range(8):
            words[:, c] |= v[:, 8 * c + order[i]] << (4 * i)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def awq_layer(k, n, group, seed=0):
    """Random true tensors of one layer in AWQ's GEMM format: (tensors, W [n, k] float64)."""
    g = torch.Generator().manual_seed(seed)
    g_idx = torch.arange(k) // group
    codes = torch.randint(0, 16, (k, n), generator=g)
    zeros = torch.randint(0, 16, (-(-k // group), n), generator=g)
    scales = (torch.rand(zeros.shape, generator=g) * 0.02 + 0.001).half()
    w = scales.double()[g_idx] * (codes - zeros[g_idx]).double()
    return {"qweight": _pack_awq(codes), "qzeros": _pack_awq(zeros), "scales": scales}, w.T.contiguous()


def ct_layer(k, n, group, bits=4, sym=True, act_order=False, packed_zp=True, seed=0):
    """Random true tensors of one layer in compressed-tensors' pack-quantized format (int8 "weight"
    for ``bits`` "int8"): (tensors, W [n, k] float64). Codes and zero-points are signed; packed
    values are stored as value + 2^(bits-1), value i of a word at bits*i."""
    g = torch.Generator().manual_seed(seed)
    nbits = 8 if bits == "int8" else bits
    half = 1 << (nbits - 1)
    gs = k if group == -1 else group
    ng = -(-k // gs)
    g_idx = torch.arange(k) // gs
    if act_order:
        g_idx = g_idx[torch.randperm(k, generator=g)]
    q = torch.randint(-half, half, (n, k), generator=g)
    zp = torch.zeros(n, ng, dtype=torch.int64) if sym else torch.randint(-half, half, (n, ng), generator=g)
    scale = (torch.rand(n, ng, generator=g) * 0.02 + 0.001).half()
    w = scale.double()[:, g_idx] * (q - zp[:, g_idx]).double()
    t = {"weight_scale": scale, "weight_shape": torch.tensor([n, k], dtype=torch.int32)}
    if bits == "int8":
        t["weight"] = q.to(torch.int8)
    else:
        t["weight_packed"] = _pack((q + half).T, nbits, 0).T.contiguous()  # along K: the GPTQ word order, transposed
    if not sym:
        t["weight_zero_point"] = _pack(zp + half, nbits, 0) if packed_zp else zp.to(torch.int8)
    if act_order:
        t["weight_g_idx"] = g_idx.to(torch.int32)
    return t, w


def gptq_layer(k, n, group, bits=4, act_order=False, sym=False, v2=False, seed=0, g_idx=None):
    """Random true tensors of one layer and their GPTQ encoding: (tensors, W [n, k] float64).
    ``g_idx``: the input columns' groups (default: k // group, shuffled when ``act_order``)."""
    g = torch.Generator().manual_seed(seed)
    gs = k if group == -1 else group
    ng = -(-k // gs)
    if g_idx is None:
        g_idx = torch.arange(k) // gs
        if act_order:
            g_idx = g_idx[torch.randperm(k, generator=g)]
    top = (1 << bits) - 1
    codes = torch.randint(0, top + 1, (k, n), generator=g)
    zeros = torch.full((ng, n), (top + 1) // 2) if sym else torch.randint(1, top + 1, (ng, n), generator=g)
    scales = (torch.rand(ng, n, generator=g) * 0.02 + 0.001).half()
    w = scales.double()[g_idx] * (codes - zeros[g_idx]).double()  # [k, n]
    stored = zeros if v2 else (zeros - 1).clamp(min=0)
    tensors = {"qweight": _pack(codes, bits, 0), "qzeros": _pack(stored, bits, 1), "scales": scales,
               "g_idx": g_idx.to(torch.int32)}
    return tensors, w.T.contiguous()


def _layer(qw, perm):
    return pq.QuantLinear.from_quantized(qw, in_perm=perm)


def _save_checkpoint(d, state: dict, config, quantization_config: dict, tokenizer=None) -> None:
    """A checkpoint directory as the tools write one: the tensors, config.json with its
    quantization_config, and a tokenizer."""
    from safetensors.torch import save_file

    d.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(d / "model.safetensors"))
    config.save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] = quantization_config
    (d / "config.json").write_text(json.dumps(cfg))
    (tokenizer or tiny_tokenizer()).save_pretrained(d)


@pytest.mark.parametrize("k, n, group, act_order, sym, v2, spec", [
    (256, 24, 128, False, False, False, "int4-g128-fp16"),
    (256, 24, 32, False, True, False, "int4-g32-sym-fp16"),
    (256, 24, 64, True, False, False, "int4-g64-fp16"),
    (256, 16, 128, True, True, True, "int4-g128-sym-fp16"),
    (384, 8, -1, False, False, True, "int4-g128-fp16"),  # per channel: one scale repeated per 128 columns
    (1024, 8, 512, True, False, False, "int4-g256-fp16"),
    (200, 8, 64, False, False, False, "int4-g64-fp16"),  # ragged last group
])
def test_gptq_layers_convert_exactly(k, n, group, act_order, sym, v2, spec):
    tensors, w = gptq_layer(k, n, group, act_order=act_order, sym=sym, v2=v2, seed=k + n)
    qw, perm = convert_gptq_layer(tensors, 4, group, k, n, v2=v2)
    assert str(qw.spec) == spec and (perm is not None) == act_order
    got = qw.dequantize(torch.float64)
    if perm is not None:  # stored columns are input columns perm[j]
        got = torch.empty_like(got).index_copy_(1, perm.long(), got)
    assert torch.equal(got, w)
    x = torch.randn(3, k, dtype=torch.float64)
    y = _layer(qw, perm)(x.float())
    torch.testing.assert_close(y.double(), x @ w.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k, n, group, spec", [(256, 24, 128, "int4-g128-fp16"), (192, 16, 64, "int4-g64-fp16"),
                                               (200, 8, 32, "int4-g32-fp16")])
def test_awq_layers_convert_exactly(k, n, group, spec):
    tensors, w = awq_layer(k, n, group, seed=k)
    qw = convert_awq_layer(tensors, group, k, n)
    assert str(qw.spec) == spec and torch.equal(qw.dequantize(torch.float64), w)
    x = torch.randn(3, k, dtype=torch.float64)
    torch.testing.assert_close(_layer(qw, None)(x.float()).double(), x @ w.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k, n, group, bits, sym, act_order, packed_zp, spec", [
    (256, 24, 128, 4, True, False, True, "int4-g128-sym-fp16"),
    (256, 24, 32, 4, False, False, True, "int4-g32-fp16"),
    (256, 16, 64, 4, False, False, False, "int4-g64-fp16"),  # an older file: zero-points as int8 [N, ng]
    (256, 16, 64, 4, True, True, True, "int4-g64-sym-fp16"),
    (384, 8, -1, 4, False, False, True, "int4-g128-fp16"),  # per channel
    (256, 8, -1, 8, True, False, True, "int8-fp16"),  # W8A16 packed four to a word
    (96, 8, -1, "int8", True, False, True, "int8-fp16"),  # int-quantized: an int8 "weight"
])
def test_compressed_tensors_layers_convert_exactly(k, n, group, bits, sym, act_order, packed_zp, spec):
    tensors, w = ct_layer(k, n, group, bits, sym=sym, act_order=act_order, packed_zp=packed_zp, seed=k + n)
    qw, perm = convert_compressed_layer(tensors, k, n)
    assert str(qw.spec) == spec and (perm is not None) == act_order
    got = qw.dequantize(torch.float64)
    if perm is not None:
        got = torch.empty_like(got).index_copy_(1, perm.long(), got)
    assert torch.equal(got, w)


def test_gptq_8bit_per_channel_symmetric_is_int8():
    tensors, w = gptq_layer(64, 8, -1, bits=8, sym=True)
    qw, perm = convert_gptq_layer(tensors, 8, -1, 64, 8)
    assert str(qw.spec) == "int8-fp16" and perm is None
    assert torch.equal(qw.dequantize(torch.float64), w)


@pytest.mark.parametrize("case, match", [
    (dict(bits=3), "3-bit GPTQ weights have no pyquant format"),
    (dict(bits=8, group=32), "8-bit GPTQ weights map onto pyquant's int8 only"),
    (dict(group=48), "not a multiple of a pyquant group size"),
    (dict(zero16=True), "zero-point of 16 is outside"),
    (dict(shape=True), "qweight is torch.int32"),
])
def test_gptq_layers_refused_with_the_reason(case, match):
    bits, group = case.get("bits", 4), case.get("group", 64)
    tensors, _ = gptq_layer(96, 8, group, bits=8 if bits == 8 else 4)
    if case.get("zero16"):
        tensors["qzeros"] = _pack(torch.full((2, 8), 15), 4, 1)  # v1: 15 + 1
    with pytest.raises(ValueError, match=match):
        convert_gptq_layer(tensors, bits, group, 96 if not case.get("shape") else 128, 8)


def _write_checkpoint(d, kind: str = "gptq", act_order: bool = False, tie: bool = False, head: bool = False):
    """A tiny Llama saved in the GPTQ or AWQ format (every linear but lm_head, groups of 32) and the
    float64 model holding the weights it encodes (``head``: lm_head quantized too)."""
    model = tiny_llama(0, tie=tie)
    ref = tiny_llama(0, tie=tie).double()
    state = {k: v.half() for k, v in model.state_dict().items()}
    for i, (name, m) in enumerate((n, m) for n, m in model.named_modules()
                                  if isinstance(m, torch.nn.Linear) and (head or n != "lm_head")):
        if kind == "awq":
            tensors, w = awq_layer(m.in_features, m.out_features, 32, seed=i)
        elif kind == "compressed-tensors":
            tensors, w = ct_layer(m.in_features, m.out_features, 32, 4, sym=False, act_order=act_order, seed=i)
        elif kind == "w8a8":
            tensors, w = ct_layer(m.in_features, m.out_features, -1, "int8", seed=i)
        else:
            tensors, w = gptq_layer(m.in_features, m.out_features, 32, act_order=act_order, seed=i)
        state.pop(f"{name}.weight")
        state.update({f"{name}.{s}": t for s, t in tensors.items()})
        with torch.no_grad():
            ref.get_submodule(name).weight.copy_(w)
    with torch.no_grad():  # the other weights as stored: fp16
        for name, p in ref.named_parameters():
            if name in state:
                p.copy_(state[name].double())
    if tie:
        state.pop("lm_head.weight", None)
    _save_checkpoint(d, state, model.config, {
        "awq": {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"},
        "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": act_order, "sym": False,
                 "checkpoint_format": "gptq"},
        "compressed-tensors": {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {
            "group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": False,
                                                           "strategy": "group", "group_size": 32}}}},
        "w8a8": {"quant_method": "compressed-tensors", "format": "int-quantized", "config_groups": {
            "group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "int", "symmetric": True,
                                                           "strategy": "channel"},
                        "input_activations": {"num_bits": 8, "type": "int", "symmetric": True, "dynamic": True,
                                              "strategy": "token"}}}},
    }[kind])
    return ref


@pytest.mark.parametrize("kind, act_order", [("gptq", False), ("gptq", True), ("awq", False),
                                             ("compressed-tensors", False), ("compressed-tensors", True)])
def test_checkpoint_loads_runs_and_saves(tmp_path, kind, act_order):
    """load_model on a GPTQ- or AWQ-format directory: QuantLinear layers in pyquant's formats whose
    logits equal the float64 model of the encoded weights; generate() runs; save_quantized /
    load_quantized keep them (the act-order permutation included)."""
    ref = _write_checkpoint(tmp_path / "gptq", kind, act_order)
    model, tok = pq.load_model(str(tmp_path / "gptq"), dtype="float32")
    assert tok is not None
    quant = {n: m for n, m in model.named_modules() if isinstance(m, pq.QuantLinear)}
    assert len(quant) == 14 and "lm_head" not in quant
    assert all((m.in_perm is not None) == act_order for m in quant.values())
    assert model.pyquant_config["method"] == f"{kind}-checkpoint"
    assert {v["spec"] for v in model.pyquant_config["layers"].values()} == {"int4-g32-fp16"}
    assert model.pyquant_config["source"]["quant_method"] == kind
    assert pq.models.model_description(model)["quant"]["source"] == model.pyquant_config["source"]
    ids = random_ids(2, 9)
    with torch.no_grad():
        want = ref(ids).logits
        got = model(ids).logits
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, 13)
    pq.save_quantized(model, tmp_path / "pq", tokenizer=tok)
    again, _ = pq.load_model(str(tmp_path / "pq"))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, got, rtol=0, atol=0)


def test_gptq_checkpoint_with_tied_head(tmp_path):
    ref = _write_checkpoint(tmp_path / "gptq", tie=True)
    model, _ = pq.load_model(str(tmp_path / "gptq"), dtype="float32")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = random_ids(1, 6)
    with torch.no_grad():
        want = ref(ids).logits
        torch.testing.assert_close(model(ids).logits.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_act_order_quantized_head_streams_the_model_logits(tmp_path):
    """An act-order GPTQ lm_head (columns stored permuted): pq.models.lm_head gives the weight whose
    product with the final hidden states is the model's own logits."""
    ref = _write_checkpoint(tmp_path / "gptq", act_order=True, head=True)
    model, _ = pq.load_model(str(tmp_path / "gptq"), dtype="float32")
    assert isinstance(model.lm_head, pq.QuantLinear) and model.lm_head.in_perm is not None
    ids = random_ids(1, 6)
    with torch.no_grad():
        hidden, _ = pq.models.final_hidden_states(model, ids)
        logits = hidden @ pq.models.lm_head(model).weight.T
        want = ref(ids).logits
    torch.testing.assert_close(logits.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_gptq_checkpoint_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    _write_checkpoint(tmp_path / "gptq")
    f = tmp_path / "gptq" / "model.safetensors"
    state = load_file(str(f))
    del state["model.layers.1.mlp.up_proj.scales"]
    save_file(state, str(f))
    with pytest.raises(ValueError, match=r"model.layers.1.mlp.up_proj.* lacks \['scales'\]"):
        pq.load_model(str(tmp_path / "gptq"))


def test_in_perm_must_be_a_permutation():
    tensors, _ = gptq_layer(64, 8, 32)
    qw, _ = convert_gptq_layer(tensors, 4, 32, 64, 8)
    with pytest.raises(ValueError, match="in_perm must be a permutation"):
        pq.QuantLinear.from_quantized(qw, in_perm=torch.zeros(64, dtype=torch.int32))


def test_awq_other_versions_are_refused(tmp_path):
    _write_checkpoint(tmp_path / "awq", "awq")
    cfg = json.loads((tmp_path / "awq" / "config.json").read_text())
    cfg["quantization_config"]["version"] = "gemv"
    (tmp_path / "awq" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="pyquant reads AWQ's GEMM format"):
        pq.load_model(str(tmp_path / "awq"))


def test_w8a8_checkpoint_runs_int8_activations(tmp_path):
    """compressed-tensors W8A8 (int8 weights, int8 dynamic per-token activations): the layers are
    int8-a8: each token quantized by max|x| / 127, then the int8 weights."""
    from pyquant.ops.reference import quantize_activations

    _write_checkpoint(tmp_path / "w8a8", "w8a8")
    model, _ = pq.load_model(str(tmp_path / "w8a8"), dtype="float32")
    assert {v["spec"] for v in model.pyquant_config["layers"].values()} == {"int8-fp16-a8"}
    layer = model.model.layers[0].mlp.down_proj
    x = torch.randn(3, layer.in_features)
    want = quantize_activations(x, layer.in_features).double() @ layer.qw.dequantize(torch.float64).T
    torch.testing.assert_close(layer(x).double(), want, rtol=1e-5, atol=1e-5)
    assert (layer(x).double() - x.double() @ layer.qw.dequantize(torch.float64).T).abs().max() > 1e-4


@pytest.mark.parametrize("change, match", [
    (lambda qc: qc.update(format="float-quantized"), "pyquant reads the integer formats"),
    (lambda qc: qc["config_groups"]["group_0"]["input_activations"].update(strategy="group"),
     "reproduces only int8 dynamic per-token activations"),
    (lambda qc: qc["config_groups"]["group_0"]["weights"].update(num_bits=2), "pyquant reads 4- and 8-bit"),
])
def test_compressed_tensors_refused_with_the_reason(tmp_path, change, match):
    _write_checkpoint(tmp_path / "ct", "w8a8")
    cfg = json.loads((tmp_path / "ct" / "config.json").read_text())
    change(cfg["quantization_config"])
    (tmp_path / "ct" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=match):
        pq.load_model(str(tmp_path / "ct"))


@pytest.mark.slow
def test_demo_model_through_the_gptq_format_is_exact(tmp_path):
    """The bundled SmolLM2-135M (K = 576: a ragged last group at G = 128; a tied head), quantized by
    pyquant to int4-g128-fp16, written in the GPTQ v1 format (packing as above) and read back:
    the same logits, bit for bit, and the same weight bytes."""
    model, tok = pq.load_model("demo")
    q = pq.quantize_model(model, "int4-g128-fp16", skip=("lm_head",))
    state = {}
    for name, t in q.state_dict().items():
        owner = name.rpartition(".")[0]
        if not isinstance(q.get_submodule(owner), pq.QuantLinear) and name != "lm_head.weight":
            state[name] = t
    for name, m in q.named_modules():
        if isinstance(m, pq.QuantLinear):
            qw = m.qw
            zeros = qw.zeros.T.long()
            assert (zeros >= 1).all()  # v1 stores zero - 1
            state.update({f"{name}.qweight": _pack(qw.codes()[:, :qw.in_features].T, 4, 0),
                          f"{name}.qzeros": _pack(zeros - 1, 4, 1), f"{name}.scales": qw.scales.T.contiguous(),
                          f"{name}.g_idx": (torch.arange(qw.in_features) // 128).to(torch.int32)})
    d = tmp_path / "smollm2-gptq"
    _save_checkpoint(d, state, q.config, {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False,
                                          "sym": False}, tok)
    back, _ = pq.load_model(str(d))
    ids = tok("The capital of France is a city that", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(back(ids).logits, q(ids).logits)
    assert pq.models.model_description(back)["weight_bytes"] == pq.models.model_description(q)["weight_bytes"]


def _compressed_by_the_library(d, weights: dict, fmt: str, activations: "dict | None" = None):
    """A tiny Llama quantized and saved by compressed-tensors itself (the library llm-compressor
    writes with): qparams from each group's min / max by its calculate_qparams, then its
    ModelCompressor. Returns the logits of its own fake-quantized forward and the input ids."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                                 QuantizationStatus, apply_quantization_config)
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    model = tiny_llama(0)
    args = QuantizationArgs(**weights)
    act = QuantizationArgs(**activations) if activations else None
    apply_quantization_config(model, QuantizationConfig(config_groups={"g": QuantizationScheme(
        targets=["Linear"], weights=args, input_activations=act)}, ignore=["lm_head"]))
    for m in model.modules():
        if hasattr(m, "weight_scale"):
            w = m.weight.detach()
            wg = w.reshape(w.shape[0], -1, weights.get("group_size") or w.shape[1])
            s, z = calculate_qparams(wg.amin(-1), wg.amax(-1), args)
            m.weight_scale.data.copy_(s.reshape(m.weight_scale.shape))
            if hasattr(m, "weight_zero_point"):
                m.weight_zero_point.data.copy_(z.reshape(m.weight_zero_point.shape))
            m.quantization_status = QuantizationStatus.FROZEN
    ids = random_ids(2, 9)
    with torch.no_grad():
        want = model(ids).logits
    comp = ModelCompressor.from_pretrained_model(model, quantization_format=fmt)
    comp.compress_model(model)
    model.save_pretrained(d)
    comp.update_config(d)
    tiny_tokenizer().save_pretrained(d)
    return want, ids


@pytest.mark.parametrize("weights, fmt, spec", [
    (dict(num_bits=4, symmetric=False, strategy="group", group_size=32), "pack-quantized", "int4-g32"),
    (dict(num_bits=4, symmetric=True, strategy="group", group_size=64), "pack-quantized", "int4-g64-sym"),
    (dict(num_bits=8, symmetric=True, strategy="channel"), "pack-quantized", "int8"),
    (dict(num_bits=8, symmetric=True, strategy="channel"), "int-quantized", "int8"),
])
def test_checkpoints_written_by_compressed_tensors(tmp_path, weights, fmt, spec):
    """Independently of this file's packers: checkpoints compressed-tensors writes load with the
    logits of its own fake-quantized forward."""
    pytest.importorskip("compressed_tensors")
    want, ids = _compressed_by_the_library(tmp_path / "ct", weights, fmt)
    model, _ = pq.load_model(str(tmp_path / "ct"), dtype="float32")
    assert model.pyquant_config["layers"]["model.layers.0.mlp.down_proj"]["spec"] == spec  # fp32 scales as stored
    with torch.no_grad():
        got = model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_gptq_checkpoint_of_a_conv1d_model(tmp_path):
    """GPT-2's projections are transformers Conv1D (weight stored [in, out]): its GPTQ layers are
    read with K = in, N = out, and the logits match the float64 model of the encoded weights."""
    from tinymodels import tiny_gpt2

    model, ref = tiny_gpt2(), tiny_gpt2().double()
    ref.load_state_dict(model.state_dict())
    state = dict(model.state_dict())
    for i, (name, m) in enumerate((n, m) for n, m in model.named_modules() if type(m).__name__ == "Conv1D"):
        k, n = m.weight.shape
        tensors, w = gptq_layer(k, n, 32, act_order=i % 2 == 1, seed=i)
        state.pop(f"{name}.weight")
        state.update({f"{name}.{s}": t for s, t in tensors.items()})
        with torch.no_grad():
            ref.get_submodule(name).weight.copy_(w.T)  # Conv1D stores [in, out]
    state.pop("lm_head.weight", None)  # tied to wte
    d = tmp_path / "gpt2-gptq"
    _save_checkpoint(d, state, model.config, {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True})
    got, _ = pq.load_model(str(d))
    assert sum(isinstance(m, pq.QuantLinear) for m in got.modules()) == 8
    ids = random_ids(2, 7)
    with torch.no_grad():
        want = ref(ids).logits
        torch.testing.assert_close(got(ids).logits.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def _write_moe_gptq(d, model_type: str, act_order: bool):
    """A tiny MoE model saved as a GPTQ checkpoint the way the tools write one: every linear and every
    expert's gate / up / down projection a layer of its own (Mixtral: w1 / w3 / w2 under
    "block_sparse_moe"); the float64 model of the encoded weights (transformers' eager experts)."""
    import copy

    from test_experts import tiny_moe

    model = tiny_moe(model_type)
    ref = copy.deepcopy(model).double()
    ref.config._experts_implementation = "eager"
    state = dict(model.state_dict())
    seed = iter(range(10_000))
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and name != "lm_head" and not name.endswith("mlp.gate"):
            tensors, w = gptq_layer(m.in_features, m.out_features, 32, act_order=act_order, seed=next(seed))
            state.pop(f"{name}.weight")
            state.update({f"{name}.{sfx}": t for sfx, t in tensors.items()})
            with torch.no_grad():
                ref.get_submodule(name).weight.copy_(w)
    names = ("w1", "w3", "w2") if model_type == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    for path, m in model.named_modules():
        if not (hasattr(m, "gate_up_proj") and m.gate_up_proj.dim() == 3):
            continue
        num, two_i, hidden = m.gate_up_proj.shape
        state.pop(f"{path}.gate_up_proj")
        state.pop(f"{path}.down_proj")
        r = ref.get_submodule(path)
        for e in range(num):
            g_idx = torch.arange(hidden) // 32
            if act_order:
                g_idx = g_idx[torch.randperm(hidden)]
            for proj, (k, n, rows) in zip(names, [(hidden, two_i // 2, slice(0, two_i // 2)),
                                                  (hidden, two_i // 2, slice(two_i // 2, two_i)),
                                                  (two_i // 2, hidden, None)]):
                tensors, w = gptq_layer(k, n, 32, seed=next(seed), g_idx=g_idx if rows is not None else None,
                                        act_order=act_order)
                state.update({f"{path}.{e}.{proj}.{sfx}": t for sfx, t in tensors.items()})
                with torch.no_grad():
                    (r.gate_up_proj[e, rows] if rows is not None else r.down_proj[e]).copy_(w)
    if model_type == "mixtral":  # the checkpoint's names for the block
        state = {k.replace(".mlp.", ".block_sparse_moe."): v for k, v in state.items()}
    _save_checkpoint(d, state, model.config, {"quant_method": "gptq", "bits": 4, "group_size": 32,
                                              "desc_act": act_order})
    return ref


@pytest.mark.parametrize("model_type, act_order", [("qwen3_moe", False), ("qwen3_moe", True), ("mixtral", True)])
def test_moe_checkpoint_with_one_layer_per_expert(tmp_path, model_type, act_order):
    """Per-expert GPTQ layers become the QuantExpertStacks of transformers' fused experts (gate and
    up stacked as gate_up_proj; Mixtral's block_sparse_moe names mapped); the logits equal the
    float64 model's; save_quantized / load_quantized keep them."""
    from pyquant.quant.experts import QuantExpertStack

    ref = _write_moe_gptq(tmp_path / "moe", model_type, act_order)
    model, tok = pq.load_model(str(tmp_path / "moe"), dtype="float32")
    stacks = {n: m for n, m in model.named_modules() if isinstance(m, QuantExpertStack)}
    assert len(stacks) == 4 and all(len(st) == 4 for st in stacks.values())
    assert all((st.expert(1).in_perm is not None) == act_order for n, st in stacks.items() if "gate_up" in n)
    ids = random_ids(2, 9)
    with torch.no_grad():
        want = ref(ids).logits
        got = model(ids).logits
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    pq.save_quantized(model, tmp_path / "pq", tokenizer=tok)
    again, _ = pq.load_model(str(tmp_path / "pq"))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, got, rtol=0, atol=0)


def test_each_compressed_tensors_layer_takes_its_best_matching_group():
    """A layer's config group, as vLLM resolves it: its exact name, then a "re:" regex, then a class name."""
    from pyquant.quant.checkpoints import _Reader

    w = {"num_bits": 4, "type": "int"}
    reader = _Reader("d", {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {
        "cls": {"targets": ["Linear"], "weights": w}, "rx": {"targets": ["re:.*down_proj$"], "weights": w},
        "exact": {"targets": ["model.layers.0.mlp.down_proj"], "weights": w},
        "head": {"targets": ["lm_head"], "weights": w}}})
    assert reader._group_of("model.layers.0.mlp.down_proj") == "exact"
    assert reader._group_of("model.layers.1.mlp.down_proj") == "rx"
    assert reader._group_of("model.layers.1.mlp.up_proj") == "cls"
    assert reader._group_of("lm_head") == "head"
