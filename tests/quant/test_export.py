"""Export to compressed-tensors (pyquant/quant/export.py, `pyquant export`): read back by pyquant
bit for bit, and decoded independently by the compressed-tensors library and transformers."""
import json

import pytest
import torch

import pyquant as pq
from pyquant.cli import main
from pyquant.quant.checkpoints import _unpack, load_quantized_checkpoint, pack_words
from pyquant.quant.export import export_compressed_tensors
from pyquant.quant.io import INDEX_NAME, weight_files
from tinymodels import random_ids, tiny_gpt2, tiny_llama, tiny_tokenizer

# transformers notes that the checkpoint's own quantization_config wins over the dequantize=True passed
pytestmark = pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning")


def _quantized(spec="int4-g32", overrides=None, seed=0, **kw):
    return pq.quantize_model(tiny_llama(seed, **kw), spec, overrides=overrides)


def _layers(model) -> dict:
    return {n: m for n, m in model.named_modules() if isinstance(m, pq.QuantLinear)}


def _weight(m) -> torch.Tensor:
    """A QuantLinear's float64 weight in its own column order (in_perm undone)."""
    return m.dequantized_weight(torch.float64)


def _library_weights(d) -> dict:
    """Every quantized layer of directory ``d`` decompressed by the compressed-tensors library itself
    (as transformers calls it), each with the scheme of the config group whose targets name it
    (exact name, else class "Linear")."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from safetensors.torch import load_file

    qc = json.loads((d / "config.json").read_text())["quantization_config"]
    tensors = {k: v for f in weight_files(str(d)) for k, v in load_file(f).items()}
    out = {}
    for name in sorted({k.rpartition(".")[0] for k in tensors if k.endswith(".weight_scale")}):
        group = next((g for g in qc["config_groups"].values() if name in g["targets"]), None) or next(
            g for g in qc["config_groups"].values() if "Linear" in g["targets"])
        scheme = QuantizationScheme(targets=group["targets"], weights=group["weights"],
                                    input_activations=group["input_activations"], format=group["format"])
        parts = {k.rpartition(".")[2]: v for k, v in tensors.items() if k.startswith(name + ".weight")}
        comp = BaseCompressor.get_value_from_registry(group["format"])
        out[name] = comp.decompress(parts, scheme)["weight"]
    return out


def _same_weight(lib: torch.Tensor, m) -> bool:
    """The library's weight (computed in the scale dtype: (q - zp) * scale, one rounding) is the
    correctly rounded float64 weight of the QuantLinear."""
    return torch.equal(lib, _weight(m).to(lib.dtype))


@pytest.mark.parametrize("bits, dim, rows, cols", [(4, 1, 5, 19), (4, 0, 13, 3), (8, 1, 3, 10), (8, 0, 6, 2)])
def test_pack_words_inverts_unpack(bits, dim, rows, cols):
    codes = torch.randint(0, 1 << bits, (rows, cols), dtype=torch.uint8)
    words = pack_words(codes, bits, dim)
    per = 32 // bits
    assert words.dtype == torch.int32
    assert words.shape == ((rows, -(-cols // per)) if dim == 1 else (-(-rows // per), cols))
    back = _unpack(words, bits, dim)
    assert torch.equal(back[:rows, :cols], codes)
    assert not back[rows:].any() and not back[:, cols:].any()  # padded with zero codes


@pytest.mark.parametrize("spec, kw, group_size", [
    ("int4-g32", {}, 32),
    ("int4-g64-sym", {}, 64),
    ("int4-g32-fp16", dict(tie=True, bias=True), 32),
    ("int8", {}, None),
    ("int4-g128", dict(hidden=96, inter=192), 32),  # K = 96: every layer written in groups of gcd(128, 96, 192)
])
def test_export_reads_back_exactly_and_the_library_decodes_the_same_weights(tmp_path, spec, kw, group_size):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    q = _quantized(spec, **kw)
    d = tmp_path / "ct"
    summary = export_compressed_tensors(q, d, tokenizer=tiny_tokenizer())
    (group,) = summary["config_groups"].values()
    assert group["weights"]["group_size"] == group_size and group["layers"] == len(_layers(q))
    ids = random_ids(2, 9)
    back = load_quantized_checkpoint(str(d))
    with torch.no_grad():
        want, got = q(ids).logits, back(ids).logits
    if group_size == next(iter(_layers(q).values())).qw.spec.group_size:
        assert torch.equal(got, want)
    else:  # the same weights in smaller groups: a kernel that scales per group (AMX) rounds differently
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    mine, lib = _layers(q), _library_weights(d)
    assert set(lib) == set(mine) == set(_layers(back))
    for name, m in mine.items():
        assert torch.equal(_weight(_layers(back)[name]), _weight(m))
        assert _same_weight(lib[name], m), name
    # transformers' model holds the library's weights (fp16 scales: rounded to fp16 by its decode)
    ref = tiny_llama(0, **kw)
    for name, w in lib.items():
        ref.get_submodule(name).weight.data = w.float()
    hf = AutoModelForCausalLM.from_pretrained(d, quantization_config=CompressedTensorsConfig(dequantize=True))
    with torch.no_grad():
        got, expected = hf(ids).logits, ref(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_int8_a8_is_w8a8_and_an_act_order_int8_layer_is_unpermuted(tmp_path):
    pytest.importorskip("compressed_tensors")
    q = _quantized("int8-a8")
    first = _layers(q)["model.layers.0.self_attn.q_proj"]
    perm = torch.randperm(first.in_features, generator=torch.Generator().manual_seed(3)).to(torch.int32)
    qw = first.qw
    # the same layer stored in a permuted column order, as act-order stores it
    codes = qw.qweight[:, perm.long()]
    permuted = pq.QuantLinear.from_quantized(pq.QuantizedWeight(qw.spec, codes.contiguous(), qw.scales, None, qw.shape),
                                             in_perm=perm)
    q.model.layers[0].self_attn.q_proj = permuted
    d = tmp_path / "ct"
    export_compressed_tensors(q, d)
    qc = json.loads((d / "config.json").read_text())["quantization_config"]
    (group,) = qc["config_groups"].values()
    assert group["format"] == "int-quantized" and group["input_activations"]["strategy"] == "token"
    back = load_quantized_checkpoint(str(d))
    assert all(str(m.spec) == "int8-a8" for m in _layers(back).values())
    assert _layers(back)["model.layers.0.self_attn.q_proj"]._buffers["in_perm"] is None
    ids = random_ids(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, q(ids).logits, rtol=1e-5, atol=1e-5)
    lib = _library_weights(d)
    for name, m in _layers(q).items():
        assert _same_weight(lib[name], m), name


def test_mixed_specs_get_one_config_group_each(tmp_path):
    """int4 layers with int8-a8 down projections: two groups naming their layers; the library and
    pyquant's reader give each layer its own group's scheme (activations quantized only in int8-a8)."""
    pytest.importorskip("compressed_tensors")
    q = _quantized("int4-g32-fp16", overrides={"*down_proj": "int8-a8"})
    d = tmp_path / "ct"
    summary = export_compressed_tensors(q, d)
    qc = json.loads((d / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "mixed-precision" and len(qc["config_groups"]) == 2
    by_format = {g["format"]: g for g in qc["config_groups"].values()}
    assert by_format["int-quantized"]["targets"] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert sorted(g["layers"] for g in summary["config_groups"].values()) == [2, 12]
    back = load_quantized_checkpoint(str(d))
    specs = {n: str(m.spec) for n, m in _layers(back).items()}
    assert specs == {n: str(m.spec) for n, m in _layers(q).items()}
    lib = _library_weights(d)
    for name, m in _layers(q).items():
        assert _same_weight(lib[name], m), name
    ids = random_ids(2, 9)
    with torch.no_grad():
        assert torch.equal(back(ids).logits, q(ids).logits)


def test_a_quantized_tied_head_is_written_untied(tmp_path):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    q = pq.quantize_model(tiny_llama(0, tie=True), "int4-g32-sym", skip=())
    summary = export_compressed_tensors(q, tmp_path / "ct")
    assert summary["ignore"] == [] and summary["config_groups"]["group_0"]["layers"] == 15
    assert json.loads((tmp_path / "ct" / "config.json").read_text())["tie_word_embeddings"] is False
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ct",
                                              quantization_config=CompressedTensorsConfig(dequantize=True))
    assert _same_weight(hf.lm_head.weight.data, q.lm_head)
    ids = random_ids(2, 9)
    with torch.no_grad():
        want = q(ids).logits
        torch.testing.assert_close(hf(ids).logits, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_sharded_export_loads_in_transformers_and_a_later_one_file_export_replaces_it(tmp_path):
    """Shards of at most a quarter of the checkpoint, packed one layer at a time: Hugging Face's index,
    transformers and pyquant load the same model as from one file; exporting again in one file into
    the same directory leaves no shard behind (pyquant's reader would otherwise see both)."""
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    q = _quantized("int4-g32", tie=True)
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    summary = export_compressed_tensors(q, one)
    assert [f["name"] for f in summary["files"]] == ["model.safetensors"]
    summary = export_compressed_tensors(q, sharded, max_shard_size=summary["files"][0]["bytes"] // 4)
    names = [f["name"] for f in summary["files"]]
    assert len(names) >= 4 and not (sharded / "model.safetensors").exists()
    index = json.loads((sharded / INDEX_NAME).read_text())
    assert sorted(set(index["weight_map"].values())) == names
    assert json.loads((sharded / "config.json").read_text()) == json.loads((one / "config.json").read_text())
    lib = _library_weights(sharded)
    assert len(lib) == 14 and all(torch.equal(w, _library_weights(one)[n]) for n, w in lib.items())
    ids = random_ids(2, 9)
    with torch.no_grad():
        want = q(ids).logits
        assert torch.equal(load_quantized_checkpoint(str(sharded))(ids).logits, want)
        hf = [AutoModelForCausalLM.from_pretrained(d, quantization_config=CompressedTensorsConfig(dequantize=True))
              for d in (one, sharded)]
        assert torch.equal(hf[0](ids).logits, hf[1](ids).logits)
    export_compressed_tensors(q, sharded)
    assert sorted(p.name for p in sharded.iterdir() if "safetensors" in p.name) == ["model.safetensors"]
    with torch.no_grad():
        assert torch.equal(load_quantized_checkpoint(str(sharded))(ids).logits, want)
    # exported over a pyquant directory: its pyquant_config.json goes too (it would claim the new files)
    pq.save_quantized(q, tmp_path / "was-pyquant")
    export_compressed_tensors(q, tmp_path / "was-pyquant")
    assert not (tmp_path / "was-pyquant" / "pyquant_config.json").exists()
    with torch.no_grad():
        assert torch.equal(load_quantized_checkpoint(str(tmp_path / "was-pyquant"))(ids).logits, want)


@pytest.mark.parametrize("kind", ["gptq", "awq"])
def test_another_tools_checkpoint_exports_to_the_same_weights(tmp_path, kind):
    """A GPTQ or AWQ checkpoint (fp16 scales, fp16 embeddings) re-exported: the library decodes the
    weights the float64 model of the original encodes, and the fp16 tensors are kept as stored."""
    pytest.importorskip("compressed_tensors")
    from test_checkpoints import _write_checkpoint

    ref = _write_checkpoint(tmp_path / kind, kind)
    model = load_quantized_checkpoint(str(tmp_path / kind))
    export_compressed_tensors(model, tmp_path / "ct")
    lib = _library_weights(tmp_path / "ct")
    assert len(lib) == 14
    for name, w in lib.items():
        assert w.dtype == torch.float16 and torch.equal(w, ref.get_submodule(name).weight.half()), name
    back = load_quantized_checkpoint(str(tmp_path / "ct"))
    assert back.model.embed_tokens.weight.dtype == torch.float16
    ids = random_ids(2, 9)
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)


def test_act_order_gptq_checkpoint_is_refused(tmp_path):
    from test_checkpoints import _write_checkpoint

    _write_checkpoint(tmp_path / "g", "gptq", act_order=True)
    with pytest.raises(ValueError, match="quantized with act-order"):
        export_compressed_tensors(load_quantized_checkpoint(str(tmp_path / "g")), tmp_path / "ct")


@pytest.mark.parametrize("make, match", [
    (lambda: pq.quantize_model(tiny_llama(0), "int4-g32-a8"), "per group of 32 columns"),
    (lambda: tiny_llama(0), "no quantized layers"),
    (lambda: pq.quantize_model(tiny_gpt2(), "int8"), "Conv1D"),
])
def test_export_refused_with_the_reason(tmp_path, make, match):
    with pytest.raises(ValueError, match=match):
        export_compressed_tensors(make(), tmp_path / "ct")
    assert not (tmp_path / "ct" / "config.json").exists()


def test_act_order_int4_is_refused(tmp_path):
    q = _quantized("int4-g32")
    m = q.model.layers[1].mlp.up_proj
    q.model.layers[1].mlp.up_proj = pq.QuantLinear.from_quantized(m.qw, in_perm=torch.arange(m.in_features))
    with pytest.raises(ValueError, match="model.layers.1.mlp.up_proj: quantized with act-order"):
        export_compressed_tensors(q, tmp_path / "ct")


def test_export_cli(tmp_path, capsys):
    pytest.importorskip("compressed_tensors")
    src = tmp_path / "q"
    pq.save_quantized(_quantized("int4-g32", tie=True), src, tokenizer=tiny_tokenizer())
    out = tmp_path / "ct"
    assert main(["export", "--model", str(src), "--output", str(out), "--dtype", "bfloat16",
                 "--max-shard-size", "20KB"]) == 0
    text = capsys.readouterr().out
    assert "group_0: 14 layers, pack-quantized (int4 groups of 32, zero-points)" in text
    assert "verified: read back, the 14 quantized layers and every other tensor are identical" in text
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16" and cfg["tie_word_embeddings"] is True
    from safetensors.torch import load_file

    tensors = {k: v for f in weight_files(str(out)) for k, v in load_file(f).items()}
    assert len(weight_files(str(out))) > 3 and (out / INDEX_NAME).exists()
    assert tensors["model.embed_tokens.weight"].dtype == torch.bfloat16 and "lm_head.weight" not in tensors
    assert tensors["model.layers.0.mlp.up_proj.weight_scale"].dtype == torch.float32  # the format's own
    assert (out / "tokenizer.json").exists()
    # a second run refuses the non-empty directory; an unquantized model is refused before writing
    assert main(["export", "--model", str(src), "--output", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    hf = tmp_path / "hf"
    tiny_llama(0).save_pretrained(hf)
    tiny_tokenizer().save_pretrained(hf)
    assert main(["export", "--model", str(hf), "--output", str(tmp_path / "x")]) == 2
    assert "has no quantized layers" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_model_exported_loads_in_transformers(tmp_path):
    """The bundled SmolLM2-135M at int4-g128 (K = 576: written in groups of 64), exported, then loaded
    by transformers with the compressed-tensors package: the logits of pyquant's model, and its greedy text."""
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    model, tok = pq.load_model("demo")
    q = pq.quantize_model(model, "int4-g128")
    summary = export_compressed_tensors(q, tmp_path / "ct", tokenizer=tok)
    assert len(summary["regrouped"]) == 210 and summary["ignore"] == ["lm_head"]
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ct",
                                              quantization_config=CompressedTensorsConfig(dequantize=True))
    ids = tok("The capital of France is a city that has a long history of", return_tensors="pt").input_ids
    with torch.no_grad():
        want, got = q(ids).logits, hf(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    gen = dict(max_new_tokens=12, do_sample=False)
    assert torch.equal(hf.generate(ids, **gen), q.generate(ids, **gen))
