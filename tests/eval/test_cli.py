"""`pyquant reference | compare | perplexity | tasks` end to end on a tiny model saved as an HF directory."""
import json

import pytest

from pyquant.cli import main
from pyquant.results import read_results
from evalkit import make_model, make_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok, model):
    d = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("p") / "prompts.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": s}) for s in ["The quick brown", "hello", "Numbers like"]) + "\n")
    return str(p)


def test_reference_compare_perplexity(tmp_path, model_dir, prompts_file, capsys):
    ref = str(tmp_path / "ref.pqref")
    assert main(["reference", "--model", model_dir, "--prompts", prompts_file, "--output", ref,
                 "--max-new-tokens", "5", "--top-n", "4", "--batch-size", "2"]) == 0
    assert "bytes per token" in capsys.readouterr().out
    out = str(tmp_path / "c.json")
    assert main(["compare", "--model", model_dir, "--reference", ref, "--output", out,
                 "--exact", "--reference-model", model_dir]) == 0
    assert "KL mean" in capsys.readouterr().out
    res = read_results(out)
    assert res["kind"] == "compare" and res["complete"] is True
    assert res["data"]["stats"]["all"]["kl_mean"] < 1e-6 and res["data"]["stats"]["all"]["top1_agree"] == 1.0
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 5)
    out = str(tmp_path / "p.json")
    assert main(["perplexity", "--model", model_dir, "--texts", str(text), "--context", "16", "--output", out]) == 0
    total = read_results(out)["data"]["total"]
    assert total["tokens"] > 16 and total["token_perplexity"] > 1 and total["bits_per_byte"] > 0


def test_bad_input_exits_2(tmp_path, model_dir, prompts_file, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert main(["reference", "--model", model_dir, "--prompts", str(empty), "--output", str(tmp_path / "x.pqref")]) == 2
    assert "no prompts" in capsys.readouterr().err
    ref = str(tmp_path / "ref.pqref")
    assert main(["reference", "--model", model_dir, "--prompts", prompts_file, "--output", ref, "--max-new-tokens", "3",
                 "--top-n", "2"]) == 0
    data = open(ref, "rb").read()
    trunc = tmp_path / "trunc.pqref"
    trunc.write_bytes(data[:-10])
    assert main(["compare", "--model", model_dir, "--reference", str(trunc), "--output", str(tmp_path / "c.json")]) == 2
    assert "truncated" in capsys.readouterr().err
    other = tmp_path / "other"
    t2 = make_tokenizer(bos=True)
    make_model(t2).save_pretrained(other)
    t2.save_pretrained(other)
    assert main(["compare", "--model", str(other), "--reference", ref, "--output", str(tmp_path / "c.json")]) == 2
    assert "tokenizer mismatch" in capsys.readouterr().err
    assert main(["compare", "--model", model_dir, "--reference", ref, "--output", str(tmp_path / "c.json"), "--exact"]) == 2
    assert not (tmp_path / "c.json").exists()
    assert main(["perplexity", "--model", model_dir, "--texts", str(empty), "--output", str(tmp_path / "p.json")]) == 2


def test_tasks_baseline_and_flips(tmp_path, model_dir, capsys):
    words = ["fox", "dog", "world", "model", "tokens", "lazy"]
    items = [{"id": f"q{i}", "task": "ab"[i % 2], "context": f"The quick brown {words[i % 6]}",
              "choices": [words[(i + j) % 6] for j in range(3)], "answer": i % 3} for i in range(10)]
    quiz = tmp_path / "quiz.jsonl"
    quiz.write_text("".join(json.dumps(it) + "\n" for it in items))
    base = str(tmp_path / "t-fp32.json")
    assert main(["tasks", "--model", model_dir, "--tasks", str(quiz), "--output", base, "--batch-size", "4"]) == 0
    assert "acc_norm" in capsys.readouterr().out
    r = read_results(base)
    assert r["kind"] == "tasks" and r["data"]["flips"] is None and len(r["data"]["items"]) == 10
    assert r["data"]["settings"]["files"] == [str(quiz)]
    qdir = str(tmp_path / "q4")
    assert main(["quantize", "--model", model_dir, "--scheme", "int4-g32", "--output", qdir]) == 0
    out = str(tmp_path / "t-q4.json")
    assert main(["tasks", "--model", qdir, "--tasks", str(quiz), "--baseline", base, "--output", out]) == 0
    assert "R->W" in capsys.readouterr().out
    f = read_results(out)["data"]["flips"]
    assert f["baseline"]["variant"] == r["variant"] and f["acc"]["all"]["n"] == 10
    assert f["acc"]["all"]["acc_baseline"] == pytest.approx(r["data"]["summary"]["all"]["acc"])
    assert not (tmp_path / "t-q4.json.partial").exists()
    # bad input: exit 2 with a one-line reason, nothing written
    bad = str(tmp_path / "bad.json")
    for argv, msg in ((["--limit", "4", "--baseline", base], "other items"), (["--limit", "0"], "--limit"),
                      (["--baseline", str(quiz)], "not valid JSON")):
        assert main(["tasks", "--model", qdir, "--tasks", str(quiz), "--output", bad] + argv) == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "bad.json").exists()


@pytest.mark.parametrize("cmd", ["reference", "compare", "perplexity", "tasks"])
def test_help_has_an_example(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "example:" in capsys.readouterr().out


def test_variant_label_tells_models_apart():
    """The default label names what made the model: spec, GPTQ, overrides; full precision as fp32."""
    from pyquant.commands import variant_label

    rtn = {"default_spec": "int4-g128", "method": "rtn", "overrides": {}}
    assert variant_label({"quant": rtn, "dtype": "float32"}, "q4") == "int4-g128"
    gptq = {**rtn, "method": "gptq", "overrides": {"*down_proj": "int8", "*.v_proj": "int8"}}
    assert variant_label({"quant": gptq}, "q4") == "int4-g128-gptq (*down_proj=int8, *.v_proj=int8)"
    assert variant_label({"quant": None, "dtype": "float32"}, "demo") == "fp32"
    assert variant_label({"quant": None, "dtype": "bfloat16"}, "demo") == "bf16"
    assert variant_label({}, "/models/smollm2/") == "smollm2"
