import json
import os

import pytest
import torch

import pyquant as pq
from pyquant.cli import main
from pyquant.results import read_results


@pytest.fixture(scope="module")
def qdir(tmp_path_factory):
    """A tiny int4 model saved as a pyquant quantized directory (no tokenizer: prompts avoid config specials)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    m = pq.quantize_model(LlamaForCausalLM(cfg).eval(), "int4-g32")
    return pq.save_quantized(m, str(tmp_path_factory.mktemp("q") / "tiny-int4"))


def test_bench_cli_writes_results_table_and_cpu_trace(qdir, tmp_path, capsys):
    out = tmp_path / "res" / "bench.json"
    rc = main(["bench", "--model", qdir, "--batch-sizes", "1,2", "--prompt-len", "8", "--gen-len", "3",
               "--requests", "2", "--warmup", "1", "--threads", "1", "--no-peak-memory", "--profile",
               "--output", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "TTFT p50 ms" in text and "gain/doubling" in text and "int4-g32" in text
    res = read_results(str(out))
    assert res["kind"] == "bench" and res["variant"] == "int4-g32" and res["complete"]
    assert res["machine"]["backend_info"] and res["machine"]["cpu_count"] >= 1
    d = res["data"]
    assert [s["batch"] for s in d["settings"]] == [1, 2]
    assert d["memory"]["weights"]["quantized_layers"] == 14
    assert d["memory"]["disk"]["bytes"] == sum(os.path.getsize(os.path.join(qdir, f)) for f in os.listdir(qdir))
    for b in (1, 2):
        trace = tmp_path / "res" / f"bench.b{b}.trace.json"
        assert trace.is_file() and "traceEvents" in json.loads(trace.read_text())


@pytest.mark.parametrize("argv,match", [
    (["--requests", "0"], "requests"),
    (["--batch-sizes", "1,x"], "batch-sizes"),
    (["--batch-sizes", "0"], "batch sizes"),
    (["--device", "tpu"], "unknown device"),
    (["--prompt-len", "60", "--gen-len", "8"], "exceeds the model's context of 64"),
])
def test_bench_cli_bad_input_exit_2(qdir, argv, match, capsys):
    rc = main(["bench", "--model", qdir, "--no-peak-memory", "--prompt-len", "8", "--gen-len", "2", *argv])
    assert rc == 2
    err = capsys.readouterr().err
    assert "pyquant bench: error:" in err and match in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_bench_cli_cuda_without_cuda_exit_2(capsys):
    assert main(["bench", "--model", "demo", "--device", "cuda"]) == 2  # fails before loading anything
    assert "CUDA is not available" in capsys.readouterr().err


def _no_model_load(monkeypatch):
    def load_model(*a, **k):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(pq, "load_model", load_model)


@pytest.mark.parametrize("argv,match", [
    (["--quantize", "int7"], "int7"),
    (["--output", "DIR"], "is a directory"),
    (["--output", "/proc/pyquant-no-such-dir/b.json"], "cannot write in /proc"),
])
def test_bench_cli_bad_input_exits_2_before_loading(qdir, tmp_path, monkeypatch, argv, match, capsys):
    if "/proc/" in argv[-1] and not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc")
    argv = [str(tmp_path) if a == "DIR" else a for a in argv]
    _no_model_load(monkeypatch)
    rc = main(["bench", "--model", qdir, "--no-peak-memory", "--prompt-len", "8", "--gen-len", "2", *argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("pyquant bench: error:") and match in err and len(err.strip().splitlines()) == 1


def test_bench_cli_output_that_is_the_model_exits_2(tmp_path, monkeypatch, capsys):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    _no_model_load(monkeypatch)
    assert main(["bench", "--model", str(gguf), "--output", str(gguf)]) == 2
    assert "same file as --model" in capsys.readouterr().err
    assert gguf.read_bytes() == b"GGUF"


@pytest.mark.parametrize("argv,flag", [
    (["--prompt-len", "0"], "--prompt-len must be an integer >= 1, got 0"),
    (["--warmup", "-1"], "--warmup must be"),
    (["--threads", "0"], "--threads must be"),
    (["--prompt-len", "60", "--gen-len", "8"], "--prompt-len + --gen-len = 60 + 8 = 68 exceeds the model's context of 64"),
])
def test_bench_cli_errors_name_the_flag(qdir, argv, flag, capsys):
    assert main(["bench", "--model", qdir, "--no-peak-memory", "--prompt-len", "8", "--gen-len", "2", *argv]) == 2
    assert flag in capsys.readouterr().err


def test_bench_cli_interrupt_says_nothing_is_saved(qdir, monkeypatch, capsys):
    def load_model(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "load_model", load_model)
    assert main(["bench", "--model", qdir]) == 130
    err = capsys.readouterr().err
    assert "interrupted (nothing saved" in err and "resume" not in err


def test_bench_cli_help_says_nothing_is_saved_without_output(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "without --output nothing is saved" in " ".join(capsys.readouterr().out.split())
