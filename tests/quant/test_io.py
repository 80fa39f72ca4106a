"""save_quantized / load_quantized: exact round trip, tied heads, tokenizer, shards, and every
corruption (missing/corrupt/truncated tensor file, unknown or newer format version) raising ValueError."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import pyquant as pq
from pyquant.models import model_fingerprint, tokenizer_fingerprint
from pyquant.quant.io import (CONFIG_NAME, INDEX_NAME, WEIGHTS_NAME, ShardWriter, dedupe_state_dict, parse_size,
                              tensor_sha256, weight_files, write_model_files)
from pyquant.quant.linear import QuantLinear
from tinymodels import random_ids


def module_types(model):
    return {n: (type(m).__name__, str(getattr(m, "spec", ""))) for n, m in model.named_modules()}


def assert_same_model(a, b, ids):
    assert module_types(a) == module_types(b)
    assert a.pyquant_config == b.pyquant_config
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
    assert model_fingerprint(a) == model_fingerprint(b)


def test_round_trip_identical(llama, tmp_path):
    pq.quantize_model(llama, "int4-g32", overrides={"*down_proj": "int8", "*v_proj": "int4-g64-sym-fp16",
                                                    "*o_proj": "int4-g32-a8"})
    pq.save_quantized(llama, tmp_path)
    loaded = pq.load_quantized(tmp_path)
    assert isinstance(loaded.model.layers[1].mlp.down_proj, QuantLinear)
    assert loaded.model.layers[0].self_attn.v_proj.scales.dtype == torch.float16
    assert str(loaded.model.layers[0].self_attn.o_proj.spec) == "int4-g32-a8"
    assert_same_model(llama, loaded, random_ids())
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert meta["format_version"] == 1 and meta["model_fingerprint"] == model_fingerprint(llama)
    assert meta["tensors"]["lm_head.weight"]["sha256"] == tensor_sha256(llama.lm_head.weight)
    # every file as readable as an ordinary new one (safetensors creates its file 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert {f.name: f.stat().st_mode & 0o777 for f in tmp_path.iterdir()} == \
        {f.name: 0o666 & ~umask for f in tmp_path.iterdir()}


def test_round_trip_tied_embeddings(tied_llama, tmp_path):
    pq.quantize_model(tied_llama, "int8")  # lm_head skipped: stays tied, stored once
    pq.save_quantized(tied_llama, tmp_path)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert meta["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert "lm_head.weight" not in load_file(tmp_path / WEIGHTS_NAME)
    loaded = pq.load_quantized(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert_same_model(tied_llama, loaded, random_ids())


def test_round_trip_quantized_tied_head_with_bias_and_tokenizer(tokenizer, tmp_path):
    from tinymodels import tiny_llama

    model = tiny_llama(tie=True, bias=True)
    pq.quantize_model(model, "int4-g64", skip=())
    pq.save_quantized(model, tmp_path, tokenizer=tokenizer)
    loaded, tok = pq.load_model(str(tmp_path))
    assert isinstance(loaded.lm_head, QuantLinear) and isinstance(loaded.model.embed_tokens, nn.Embedding)
    assert loaded.model.layers[0].self_attn.q_proj.bias is not None
    assert_same_model(model, loaded, random_ids())
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(tokenizer)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["tokenizer_fingerprint"] == tokenizer_fingerprint(tok)


def test_loaded_tensors_cache_line_aligned(saved):
    # safetensors' load_file places tensors at their file offsets (8-byte alignment at best); the
    # CPU kernels read codes 32-64 bytes at a time, about 5% slower when those loads split cache lines
    loaded = pq.load_quantized(saved)
    tensors = dict(loaded.named_parameters()) | dict(loaded.named_buffers())
    odd = {k: t.data_ptr() % 64 for k, t in tensors.items() if t.numel() and t.data_ptr() % 64}
    assert not odd, f"tensors not 64-byte aligned: {odd}"


@pytest.fixture
def saved(llama, tmp_path):
    pq.quantize_model(llama, "int4-g32")
    pq.save_quantized(llama, tmp_path)
    return tmp_path


def _edit_meta(path, fn):
    meta = json.loads((path / CONFIG_NAME).read_text())
    fn(meta)
    (path / CONFIG_NAME).write_text(json.dumps(meta))


def test_corrupt_tensor_bytes(saved):
    f = saved / WEIGHTS_NAME
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF  # a byte of the last tensor's data, same file size
    f.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        pq.load_quantized(saved)


def test_truncated_file(saved):
    f = saved / WEIGHTS_NAME
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        pq.load_quantized(saved)
    _edit_meta(saved, lambda m: m["file"].pop("bytes"))  # without the size check, safetensors says it
    with pytest.raises(ValueError, match="cannot read safetensors"):
        pq.load_quantized(saved)


def test_missing_tensor(saved):
    f = saved / WEIGHTS_NAME
    tensors = load_file(f)
    victim = "model.layers.1.mlp.up_proj.scales"
    del tensors[victim]
    save_file(tensors, f)
    _edit_meta(saved, lambda m: m["file"].update(bytes=os.path.getsize(f)))
    with pytest.raises(ValueError, match="missing tensor.*up_proj.scales"):
        pq.load_quantized(saved)


def test_missing_files(saved):
    (saved / WEIGHTS_NAME).unlink()
    with pytest.raises(ValueError, match="is missing"):
        pq.load_quantized(saved)
    (saved / CONFIG_NAME).unlink()
    with pytest.raises(ValueError, match="not a pyquant quantized directory"):
        pq.load_quantized(saved)


@pytest.mark.parametrize("version,message", [(3, "newer"), ("1", "unknown format_version"), (0, "unknown format_version")])
def test_bad_format_version(saved, version, message):
    _edit_meta(saved, lambda m: m.update(format_version=version))
    with pytest.raises(ValueError, match=message):
        pq.load_quantized(saved)


def test_bad_format_and_json(saved):
    _edit_meta(saved, lambda m: m.update(format="something.else"))
    with pytest.raises(ValueError, match="unknown format"):
        pq.load_quantized(saved)
    (saved / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        pq.load_quantized(saved)


def test_layer_not_in_architecture(saved):
    _edit_meta(saved, lambda m: m["quant"]["layers"].update({"model.layers.7.mlp.up_proj": {"spec": "int8", "shape": [128, 64]}}))
    with pytest.raises(ValueError, match="does not exist"):
        pq.load_quantized(saved)


def test_save_unquantized_model_is_an_error(llama, tmp_path):
    with pytest.raises(ValueError, match="no quantized layers"):
        pq.save_quantized(llama, tmp_path)


def test_round_trip_gpt2(tmp_path):
    from tinymodels import tiny_gpt2

    model = tiny_gpt2()
    pq.quantize_model(model, "int4-g32", overrides={"*c_proj": "int8"})
    pq.save_quantized(model, tmp_path)
    assert_same_model(model, pq.load_quantized(tmp_path), random_ids())


def _state_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in dedupe_state_dict(model)[0].values())


def test_sharded_round_trip_then_one_file_again(llama, tmp_path):
    pq.quantize_model(llama, "int4-g32", overrides={"*down_proj": "int8"})
    limit = _state_bytes(llama) // 4
    pq.save_quantized(llama, tmp_path, max_shard_size=limit)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert meta["format_version"] == 2 and "file" not in meta
    names = [f["name"] for f in meta["files"]]
    assert len(names) >= 4 and names == [f"model-{i:05d}-of-{len(names):05d}.safetensors" for i in range(1, len(names) + 1)]
    assert not (tmp_path / WEIGHTS_NAME).exists()
    index = json.loads((tmp_path / INDEX_NAME).read_text())  # Hugging Face's layout
    assert set(index["weight_map"]) == set(meta["tensors"]) and sorted(set(index["weight_map"].values())) == names
    assert index["metadata"]["total_size"] == sum(f["bytes"] for f in meta["files"])
    for f in meta["files"]:
        assert os.path.getsize(tmp_path / f["name"]) == f["bytes"]
        tensors = load_file(tmp_path / f["name"])
        assert set(tensors) == {n for n, file in index["weight_map"].items() if file == f["name"]}
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        assert size <= limit or len(tensors) == 1, f["name"]  # a tensor larger than the limit: a file of its own
    assert weight_files(str(tmp_path)) == [str(tmp_path / n) for n in names]
    assert_same_model(llama, pq.load_quantized(tmp_path), random_ids())
    # saved again into the same directory in one file: the shards and the index are gone
    pq.save_quantized(llama, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if "safetensors" in p.name) == [WEIGHTS_NAME]
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["format_version"] == 1
    assert_same_model(llama, pq.load_quantized(tmp_path), random_ids())


def test_sharded_corruption_names_the_file(llama, tmp_path):
    pq.quantize_model(llama, "int4-g32")
    pq.save_quantized(llama, tmp_path, max_shard_size=_state_bytes(llama) // 3)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    second = tmp_path / meta["files"][1]["name"]
    data = bytearray(second.read_bytes())
    data[-10] ^= 0xFF
    second.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{second.name}: checksum mismatch"):
        pq.load_quantized(tmp_path)
    second.unlink()
    with pytest.raises(ValueError, match=f"weights file {second.name} is missing"):
        pq.load_quantized(tmp_path)
    _edit_meta(tmp_path, lambda m: m.pop("files"))
    with pytest.raises(ValueError, match="missing field 'files'"):
        pq.load_quantized(tmp_path)


def test_a_tensor_in_two_shards_is_an_error(llama, tmp_path):
    pq.quantize_model(llama, "int8")
    pq.save_quantized(llama, tmp_path, max_shard_size=_state_bytes(llama) // 3)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    first, second = (tmp_path / f["name"] for f in meta["files"][:2])
    a, b = load_file(first), load_file(second)
    name = next(iter(a))
    b[name] = a[name]
    save_file(b, second)
    meta["files"][1]["bytes"] = os.path.getsize(second)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"{second.name}: tensor.*{name}.*also stored in {first.name}"):
        pq.load_quantized(tmp_path)


@pytest.mark.parametrize("text, n", [("5GB", 5 * 10**9), ("500 MB", 5 * 10**8), ("2GiB", 2 * 2**30), ("1.5gb", 1.5e9),
                                     ("64KiB", 65536), ("77", 77), (4096, 4096), ("3b", 3)])
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["0", "-1GB", "5XB", "", "GB", "1e3", "0.1", 0, True])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_shard_writer_keeps_order_and_gives_a_large_tensor_its_own_file(tmp_path):
    ts = {"a": torch.zeros(10), "big": torch.arange(100.0), "b": torch.ones(5), "c": torch.full((21,), 2.0)}
    w = ShardWriter(str(tmp_path), max_bytes=100, metadata={"format": "pt"})  # 25 float32 values
    for name, t in ts.items():
        w.add(name, t)
    with pytest.raises(ValueError, match="written twice"):
        w.add("a", ts["a"])
    files = w.close()
    assert [f["name"] for f in files] == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    got = [load_file(tmp_path / f["name"]) for f in files]
    assert [list(g) for g in got] == [["a"], ["big"], ["b"], ["c"]]  # "b" + "c" would pass 100 bytes
    for g in got:
        for name, t in g.items():
            assert torch.equal(t, ts[name])
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_failed_write_leaves_no_weights_and_removes_the_old_ones(llama, tmp_path):
    """A producer that fails after some shards were written: no shard, index or temporary file is
    left, and neither is the earlier directory's weights or its last file (the directory reads as
    incomplete, never as the old model with new shards)."""
    pq.quantize_model(llama, "int4-g32")
    pq.save_quantized(llama, tmp_path)

    def failing():
        for i, (name, t) in enumerate(dedupe_state_dict(llama)[0].items()):
            if i == 10:
                raise RuntimeError("out of memory")
            yield name, t

    with pytest.raises(RuntimeError, match="out of memory"):
        write_model_files(str(tmp_path), failing(), {}, llama, last=CONFIG_NAME, who="test", max_shard_size=4096)
    assert not [p.name for p in tmp_path.iterdir() if "safetensors" in p.name or p.name == CONFIG_NAME]
    with pytest.raises(ValueError, match="not a pyquant quantized directory"):
        pq.load_quantized(tmp_path)
