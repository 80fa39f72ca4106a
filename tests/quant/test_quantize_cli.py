"""`pyquant quantize` through pyquant.cli.main on a tiny HF model directory."""
import pytest

from pyquant.cli import main
from pyquant.quant.linear import QuantLinear
from tinymodels import tiny_llama


@pytest.fixture
def hf_dir(tmp_path, tokenizer):
    d = tmp_path / "tiny-hf"
    tiny_llama(tie=True).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def test_quantize_writes_a_loadable_directory(hf_dir, tmp_path, capsys):
    import pyquant as pq

    out = tmp_path / "q"
    rc = main(["quantize", "--model", str(hf_dir), "--scheme", "int4-g32", "--override", "*down_proj=int8",
               "--output", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "quantized 14 linear layers (rtn): 12 x int4-g32, 2 x int8" in text
    assert "weights in memory:" in text and "smaller" in text
    model, tok = pq.load_model(str(out))
    assert tok is not None and type(model.lm_head).__name__ == "Linear"
    assert isinstance(model.model.layers[0].mlp.down_proj, QuantLinear)
    assert str(model.model.layers[0].mlp.down_proj.spec) == "int8"


def test_skip_nothing_quantizes_the_head(hf_dir, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(hf_dir), "--scheme", "int8", "--skip", "--output", str(out)]) == 0
    assert "quantized 15 linear layers" in capsys.readouterr().out


def test_max_shard_size_writes_shards_that_load(hf_dir, tmp_path, capsys):
    import json

    import pyquant as pq

    out = tmp_path / "q"
    assert main(["quantize", "--model", str(hf_dir), "--scheme", "int4-g32", "--output", str(out),
                 "--max-shard-size", "16KiB"]) == 0
    files = json.loads((out / "pyquant_config.json").read_text())["files"]
    assert f"{len(files)} weight shards)" in capsys.readouterr().out
    assert len(files) > 3 and all(f["name"].startswith("model-0") for f in files)
    model, tok = pq.load_model(str(out))
    assert isinstance(model.model.layers[0].mlp.down_proj, QuantLinear) and tok is not None
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # argparse's usage error
        main(["quantize", "--model", str(hf_dir), "--scheme", "int8", "--output", str(tmp_path / "x"),
              "--max-shard-size", "0"])
    assert e.value.code == 2
    assert "--max-shard-size: size '0': must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--scheme", "int4-g100"], "group size"),
    (["--scheme", "int8", "--override", "down_proj"], "PATTERN=SPEC"),
    (["--scheme", "int8", "--override", "down_proj=int5"], "cannot parse"),
])
def test_bad_input_exits_2(hf_dir, tmp_path, capsys, extra, message):
    rc = main(["quantize", "--model", str(hf_dir), "--output", str(tmp_path / "q"), *extra])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_bad_model_and_nonempty_output_exit_2(hf_dir, tmp_path, capsys):
    assert main(["quantize", "--model", str(tmp_path / "nope"), "--scheme", "int8", "--output", str(tmp_path / "q")]) == 2
    assert "is not 'demo'" in capsys.readouterr().err
    assert main(["quantize", "--model", str(hf_dir), "--scheme", "int8", "--output", str(hf_dir)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_bfloat16_output(hf_dir, tmp_path, capsys):
    import torch

    import pyquant as pq

    out = tmp_path / "q"
    assert main(["quantize", "--model", str(hf_dir), "--scheme", "int4-g32", "--dtype", "bfloat16",
                 "--output", str(out)]) == 0
    model = pq.load_quantized(out)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.layers[0].mlp.up_proj.scales.dtype == torch.float32


@pytest.mark.parametrize("stored", ["bfloat16", "float16"])
def test_half_precision_checkpoint_quantizes_as_from_float32(tmp_path, tokenizer, stored):
    """RTN starts from the checkpoint's own dtype (no float32 copy of the whole model first) and
    writes the same tensors, bit for bit, as quantizing its float32 upcast."""
    import torch
    from safetensors.torch import load_file

    import pyquant as pq

    src = tmp_path / "hf"
    tiny_llama(std=0.3).to(getattr(torch, stored)).save_pretrained(src)
    tokenizer.save_pretrained(src)
    assert main(["quantize", "--model", str(src), "--scheme", "int4-g32", "--override", "*down_proj=int8",
                 "--output", str(tmp_path / "q")]) == 0
    model, _ = pq.load_model(str(src), dtype="float32")
    pq.quantize_model(model, "int4-g32", overrides={"*down_proj": "int8"})
    pq.save_quantized(model, tmp_path / "ref")
    got, want = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("q", "ref"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert got["model.embed_tokens.weight"].dtype == torch.float32  # --dtype's default for the kept layers
    assert pq.load_model(str(src), dtype="auto")[0].model.embed_tokens.weight.dtype == getattr(torch, stored)


def test_gptq_from_a_calibration_file(hf_dir, tmp_path, capsys):
    import pyquant as pq

    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(f"w{3 + i % 290}" for i in range(400)))
    out = tmp_path / "q"
    rc = main(["quantize", "--model", str(hf_dir), "--scheme", "int4-g32", "--method", "gptq", "--calibration",
               str(calib), "--calib-seqs", "3", "--calib-len", "64", "--damp", "0.02", "--output", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "GPTQ: calibrating on 3 windows of 64 tokens" in text and "quantized 14 linear layers (gptq)" in text
    model, _ = pq.load_model(str(out))
    g = model.pyquant_config["gptq"]
    assert (g["sequences"], g["tokens"], g["damp"], g["attention_aware_v"]) == (3, 192, 0.02, 2)
    assert main(["quantize", "--model", str(hf_dir), "--scheme", "int4-g32", "--method", "gptq", "--calibration",
                 str(calib), "--calib-seqs", "3", "--calib-len", "64", "--plain-v", "--output", str(tmp_path / "p")]) == 0
    assert pq.load_model(str(tmp_path / "p"))[0].pyquant_config["gptq"]["attention_aware_v"] == 0
    assert main(["quantize", "--model", str(hf_dir), "--scheme", "int4-g32", "--method", "gptq", "--calibration",
                 str(calib), "--calib-seqs", "3", "--calib-len", "64", "--act-order", "--output",
                 str(tmp_path / "a")]) == 0
    act = pq.load_model(str(tmp_path / "a"))[0].pyquant_config
    assert act["gptq"]["act_order"] is True and all(v.get("in_perm") for v in act["layers"].values())
    assert main(["quantize", "--model", str(hf_dir), "--scheme", "int4-g32", "--method", "gptq", "--calibration",
                 str(calib), "--calib-seqs", "3", "--calib-len", "64", "--act-order", "static", "--output",
                 str(tmp_path / "s")]) == 0
    static = pq.load_model(str(tmp_path / "s"))[0].pyquant_config
    assert static["gptq"]["act_order"] == "static" and not any("in_perm" in v for v in static["layers"].values())


@pytest.mark.parametrize("extra,message", [
    (["--calibration", "/nonexistent.txt"], "cannot read"),
    (["--calib-seqs", "0"], "--calib-seqs"),
    (["--damp", "-1"], "--damp"),
    (["--method", "rtn", "--act-order"], "--act-order: GPTQ options, pass --method gptq"),
])
def test_gptq_bad_options_exit_2(hf_dir, tmp_path, capsys, extra, message):
    rc = main(["quantize", "--model", str(hf_dir), "--scheme", "int8", "--method", "gptq", "--output",
               str(tmp_path / "q"), *extra])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_gptq_calibration_too_short_exits_2(hf_dir, tmp_path, capsys):
    calib = tmp_path / "short.txt"
    calib.write_text("w3 w4 w5")
    rc = main(["quantize", "--model", str(hf_dir), "--scheme", "int8", "--method", "gptq", "--calibration", str(calib),
               "--output", str(tmp_path / "q")])
    assert rc == 2 and "fewer than one window" in capsys.readouterr().err


@pytest.mark.parametrize("extra,pattern", [
    (["--override", "*nomatch=int8"], "--override '*nomatch'"),
    (["--override", "down_proj*=int8"], "--override 'down_proj*'"),  # a glob matches the whole name
    (["--skip", "lm_head", "nomatch"], "--skip 'nomatch'"),
])
def test_pattern_matching_no_layer_exits_2(hf_dir, tmp_path, capsys, extra, pattern):
    out = tmp_path / "q"
    rc = main(["quantize", "--model", str(hf_dir), "--scheme", "int8", "--output", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("pyquant quantize: error: ") and pattern in line and "matches none of the 15" in line
    assert "(e.g. model.layers.0.self_attn.q_proj, model.layers.0.mlp.gate_proj, lm_head)" in line
    assert "Warning" not in err and not out.exists()


def test_default_skip_matching_nothing_is_a_note(capsys):
    """Only the patterns the user gave are checked: the default --skip lm_head gets a note."""
    from torch import nn

    from pyquant.cli import UsageError
    from pyquant.commands.quantize import _check_patterns

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    _check_patterns(model, ["lm_head"], {}, user_skip=False)
    assert "no linear layer matches the default --skip lm_head" in capsys.readouterr().out
    with pytest.raises(UsageError, match=r"--skip 'lm_head' matches none of the 2 linear layers \(e.g. 0, 2\)"):
        _check_patterns(model, ["lm_head"], {}, user_skip=True)


def _no_model_load(monkeypatch):
    import pyquant.models

    def load_model(*a, **k):
        raise AssertionError("the model was loaded before the bad --output was reported")

    monkeypatch.setattr(pyquant.models, "load_model", load_model)


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self"), reason="needs /proc (not writable, even for root)")
def test_unwritable_output_exits_2_before_loading(hf_dir, tmp_path, monkeypatch, capsys):
    _no_model_load(monkeypatch)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, msg in (("/proc/q", "cannot write in /proc"), (str(a_file), "exists and is not a directory"),
                     (str(a_file / "q"), "is not a directory")):
        assert main(["quantize", "--model", str(hf_dir), "--scheme", "int8", "--output", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith("pyquant quantize: error: ") and msg in err and "Traceback" not in err, err


def test_output_that_is_the_model_exits_2_even_with_overwrite(hf_dir, tmp_path, monkeypatch, capsys):
    import pyquant.models

    before = sorted((p.name, p.stat().st_size) for p in hf_dir.iterdir())
    load_model = pyquant.models.load_model
    _no_model_load(monkeypatch)
    assert main(["quantize", "--model", str(hf_dir), "--scheme", "int8", "--output", str(hf_dir), "--overwrite"]) == 2
    assert "same directory as --model" in capsys.readouterr().err
    assert sorted((p.name, p.stat().st_size) for p in hf_dir.iterdir()) == before
    # --overwrite still writes into another non-empty directory
    monkeypatch.setattr(pyquant.models, "load_model", load_model)
    out = tmp_path / "q"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    assert main(["quantize", "--model", str(hf_dir), "--scheme", "int8", "--output", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "kept" and (out / "pyquant_config.json").is_file()


def test_interrupt_says_nothing_is_saved(hf_dir, tmp_path, monkeypatch, capsys):
    import pyquant.models

    def load_model(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pyquant.models, "load_model", load_model)
    assert main(["quantize", "--model", str(hf_dir), "--scheme", "int8", "--output", str(tmp_path / "q")]) == 130
    err = capsys.readouterr().err
    assert "interrupted (nothing saved" in err and "resume" not in err


def test_moe_experts_quantized_from_the_command_line(tmp_path, tokenizer, capsys):
    """A mixture-of-experts checkpoint (experts stored as 3-D parameters): patterns reach the
    experts, which are quantized and load back as such."""
    import pyquant as pq
    from pyquant.quant.experts import QuantExpertStack
    from test_experts import tiny_moe

    d = tmp_path / "tiny-moe"
    tiny_moe("mixtral").save_pretrained(d)
    tokenizer.save_pretrained(d)
    out = tmp_path / "q"
    rc = main(["quantize", "--model", str(d), "--scheme", "int4-g32", "--override", "*experts.down_proj=int8",
               "--output", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "quantized 12 linear layers (rtn, 4 of them mixture-of-experts weights (16 experts)): " \
           "10 x int4-g32, 2 x int8" in text
    model, _ = pq.load_model(str(out))
    experts = model.model.layers[0].mlp.experts
    assert isinstance(experts.gate_up_proj, QuantExpertStack) and isinstance(experts.down_proj, QuantExpertStack)
    assert str(experts.down_proj.expert(3).spec) == "int8" and str(experts.gate_up_proj.expert(0).spec) == "int4-g32"


def test_moe_routers_kept_unless_asked_from_the_command_line(tmp_path, tokenizer, capsys):
    """HunYuan-MoE's routers (nn.Linear to the number of experts) stay full precision and the CLI
    says so; --quantize-routers quantizes them."""
    import torch

    import pyquant as pq
    from test_experts import tiny_moe

    d = tmp_path / "tiny-hunyuan"
    tiny_moe("hunyuan_v1_moe").save_pretrained(d)
    tokenizer.save_pretrained(d)
    rc = main(["quantize", "--model", str(d), "--scheme", "int8", "--output", str(tmp_path / "q")])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "kept in full precision: skip=['lm_head'], 2 mixture-of-experts routers (--quantize-routers" in text
    model, _ = pq.load_model(str(tmp_path / "q"))
    assert type(model.model.layers[0].mlp.gate.wg) is torch.nn.Linear
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[5, 6, 7]])).logits).all()
    rc = main(["quantize", "--model", str(d), "--scheme", "int8", "--quantize-routers", "--output", str(tmp_path / "r")])
    text = capsys.readouterr().out
    assert rc == 0 and "mixture-of-experts routers" not in text, text
    model, _ = pq.load_model(str(tmp_path / "r"))
    assert isinstance(model.model.layers[0].mlp.gate.wg, pq.QuantLinear)
