"""`pyquant reference | compare | perplexity | tasks` end to end on a tiny model saved as an HF directory."""
import json
import os

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


def test_dtype_bfloat16_end_to_end(tmp_path, model_dir, prompts_file, capsys):
    """--dtype bfloat16 runs the reference, the candidate and the perplexity in bf16 (half a large
    model's memory) and says so in each results file; against a bf16 reference, the same bf16
    model diverges by nothing, the float32 one by bf16's rounding."""
    ref = str(tmp_path / "ref.pqref")
    assert main(["reference", "--model", model_dir, "--dtype", "bfloat16", "--prompts", prompts_file,
                 "--output", ref, "--max-new-tokens", "5", "--top-n", "4"]) == 0
    from pyquant.eval.store import ReferenceStore

    assert ReferenceStore.load(ref).meta["model"]["dtype"] == "bfloat16"
    kl = {}
    for dtype in ("bfloat16", "float32"):
        out = str(tmp_path / f"c-{dtype}.json")
        assert main(["compare", "--model", model_dir, "--dtype", dtype, "--reference", ref, "--output", out]) == 0
        res = read_results(out)
        assert res["model"]["dtype"] == dtype and res["variant"] == {"bfloat16": "bf16", "float32": "fp32"}[dtype]
        kl[dtype] = res["data"]["stats"]["all"]["kl_mean"]
    assert kl["bfloat16"] < 1e-6 < kl["float32"]
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 5)
    out = str(tmp_path / "p.json")
    assert main(["perplexity", "--model", model_dir, "--dtype", "bfloat16", "--texts", str(text), "--context", "16",
                 "--output", out]) == 0
    assert read_results(out)["model"]["dtype"] == "bfloat16"
    capsys.readouterr()


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
    items = [{"id": f"q{i}", "task": "ab"[i % 2], "context": f"The quick brown {words[i % 6]}, 3 1 4 1 5 9 2 6 {i}",
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
    # the quantized model (QuantLinear layers) scored with every choice run whole: the same scores
    whole = str(tmp_path / "t-q4-whole.json")
    assert main(["tasks", "--model", qdir, "--tasks", str(quiz), "--output", whole, "--no-share-prefix"]) == 0
    for a, b in zip(read_results(out)["data"]["items"], read_results(whole)["data"]["items"]):
        assert a["loglik"] == pytest.approx(b["loglik"], rel=1e-5, abs=1e-4)
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
    other = {"default_spec": "int4-g128-fp16", "method": "gptq-checkpoint", "overrides": {}}
    assert variant_label({"quant": other}, "/hub/Llama-GPTQ/") == "Llama-GPTQ (gptq, int4-g128-fp16)"


def _no_model_load(monkeypatch):
    """Make any model load fail the test: the command had to stop before it."""
    import pyquant.models

    def load_model(*a, **k):
        raise AssertionError("the model was loaded before the bad output path was reported")

    monkeypatch.setattr(pyquant.models, "load_model", load_model)


def _one_line_error(err: str, cmd: str) -> str:
    """The error line, the last of stderr (progress bars may come before it); no traceback."""
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith(f"pyquant {cmd}: error: ") and "Traceback" not in err, err
    assert sum("error" in ln for ln in lines) == 1, err
    return lines[-1]


def test_output_that_is_an_input_exits_2(tmp_path, model_dir, prompts_file, capsys):
    ref = tmp_path / "ref.pqref"
    assert main(["reference", "--model", model_dir, "--prompts", prompts_file, "--output", str(ref),
                 "--max-new-tokens", "2", "--top-n", "2"]) == 0
    capsys.readouterr()
    data, prompts = ref.read_bytes(), open(prompts_file, "rb").read()
    assert main(["compare", "--model", model_dir, "--reference", str(ref), "--output", str(ref)]) == 2
    assert "same file as --reference" in _one_line_error(capsys.readouterr().err, "compare")
    assert ref.read_bytes() == data
    # another spelling of the same file
    alias = str(tmp_path / "sub" / ".." / "ref.pqref")
    (tmp_path / "sub").mkdir()
    assert main(["compare", "--model", model_dir, "--reference", str(ref), "--output", alias]) == 2
    assert "same file as --reference" in capsys.readouterr().err
    assert main(["reference", "--model", model_dir, "--prompts", prompts_file, "--output", prompts_file]) == 2
    assert "same file as --prompts" in _one_line_error(capsys.readouterr().err, "reference")
    assert open(prompts_file, "rb").read() == prompts
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.")
    assert main(["perplexity", "--model", model_dir, "--texts", str(text), "--output", str(text)]) == 2
    assert "same file as --texts" in capsys.readouterr().err
    assert text.read_text() == "The quick brown fox jumps over the lazy dog."
    quiz = tmp_path / "quiz.jsonl"
    quiz.write_text(json.dumps({"id": "q", "context": "The quick brown", "choices": ["fox", "dog"], "answer": 0}) + "\n")
    base = tmp_path / "base.json"
    assert main(["tasks", "--model", model_dir, "--tasks", str(quiz), "--output", str(base)]) == 0
    capsys.readouterr()
    saved = base.read_bytes()
    for extra, flag in (([], "--tasks"), (["--baseline", str(base)], "--baseline")):
        out = str(quiz) if flag == "--tasks" else str(base)
        assert main(["tasks", "--model", model_dir, "--tasks", str(quiz), "--output", out] + extra) == 2
        assert f"same file as {flag}" in capsys.readouterr().err
    assert base.read_bytes() == saved


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc (not writable, even for root)")
def test_bad_output_path_exits_2_before_loading_the_model(tmp_path, model_dir, prompts_file, monkeypatch, capsys):
    ref = str(tmp_path / "ref.pqref")
    assert main(["reference", "--model", model_dir, "--prompts", prompts_file, "--output", ref,
                 "--max-new-tokens", "2", "--top-n", "2"]) == 0
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.")
    capsys.readouterr()
    _no_model_load(monkeypatch)
    inputs = {"reference": ["--prompts", prompts_file], "compare": ["--reference", ref],
              "perplexity": ["--texts", str(text)], "tasks": []}
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for cmd, extra in inputs.items():
        for out, msg in ((str(tmp_path), "is a directory"), ("/proc/pyquant-no-such-dir/out.json", "cannot write in /proc"),
                         (str(a_file / "out.json"), "is not a directory")):
            assert main([cmd, "--model", model_dir, "--output", out] + extra) == 2, (cmd, out)
            assert msg in _one_line_error(capsys.readouterr().err, cmd), (cmd, out)
    assert not any(p.name.startswith(".pyquant-probe") for p in tmp_path.iterdir())


def test_failed_final_write_is_a_one_line_error(tmp_path, model_dir, prompts_file, monkeypatch, capsys):
    """A write that fails after the up-front check (here: the check is skipped) exits 2 with one line."""
    import pyquant.commands.outputs as outputs

    ref = str(tmp_path / "ref.pqref")
    assert main(["reference", "--model", model_dir, "--prompts", prompts_file, "--output", ref,
                 "--max-new-tokens", "2", "--top-n", "2"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(outputs, "check_output", lambda path, *a, **k: path)
    d = tmp_path / "adir"
    d.mkdir()
    assert main(["compare", "--model", model_dir, "--reference", ref, "--output", str(d)]) == 2
    err = _one_line_error(capsys.readouterr().err, "compare")
    assert err.endswith(f"cannot write --output {d}: Is a directory")
    assert list(d.iterdir()) == [] and not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_write_results_leaves_no_temp_file(tmp_path):
    from pyquant.results import make_results, write_results

    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        write_results(str(tmp_path / "d"), make_results("compare", {}, machine={}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    write_results(str(tmp_path / "r.json"), make_results("compare", {}, machine={}))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize("cmd,resumes", [("reference", True), ("tasks", True), ("compare", False),
                                         ("perplexity", False)])
def test_interrupt_message_says_whether_a_rerun_resumes(cmd, resumes, tmp_path, model_dir, prompts_file,
                                                        monkeypatch, capsys):
    import pyquant.models

    def load_model(*a, **k):
        raise KeyboardInterrupt

    ref = str(tmp_path / "ref.pqref")
    if cmd == "compare":
        assert main(["reference", "--model", model_dir, "--prompts", prompts_file, "--output", ref,
                     "--max-new-tokens", "2", "--top-n", "2"]) == 0
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.")
    capsys.readouterr()
    monkeypatch.setattr(pyquant.models, "load_model", load_model)
    extra = {"reference": ["--prompts", prompts_file], "compare": ["--reference", ref],
             "perplexity": ["--texts", str(text)], "tasks": []}[cmd]
    assert main([cmd, "--model", model_dir, "--output", str(tmp_path / "out")] + extra) == 130
    err = capsys.readouterr().err
    assert err.startswith(f"pyquant {cmd}: interrupted")
    assert ("rerun the same command to resume" in err) == resumes
    assert ("nothing saved" in err) == (not resumes)


def test_which_commands_resume():
    """Each command module says whether an interrupted run resumes (the demo reuses finished files)."""
    from pyquant.cli import COMMANDS, build_parser

    [sub] = [a for a in build_parser()._actions if a.dest == "command"]
    resumes = {c for c in COMMANDS if sub.choices[c].get_default("_resumes")}
    assert resumes == {"reference", "tasks", "demo"}


def test_sampling_options_without_sample_exit_2(tmp_path, model_dir, prompts_file, monkeypatch, capsys):
    import pyquant.models

    base = ["reference", "--model", model_dir, "--prompts", prompts_file, "--max-new-tokens", "2", "--top-n", "2"]
    out = str(tmp_path / "ref.pqref")
    load_model = pyquant.models.load_model
    _no_model_load(monkeypatch)
    for extra, flag in ((["--temperature", "0.5"], "--temperature"), (["--seed", "7"], "--seed")):
        assert main(base + ["--output", out] + extra) == 2
        assert f"{flag} only applies with --sample" in _one_line_error(capsys.readouterr().err, "reference")
    assert not os.path.exists(out)
    monkeypatch.setattr(pyquant.models, "load_model", load_model)
    # at their defaults, or with --sample, they are fine
    assert main(base + ["--output", str(tmp_path / "a.pqref"), "--temperature", "1", "--seed", "0"]) == 0
    assert main(base + ["--output", str(tmp_path / "b.pqref"), "--sample", "--temperature", "0.5", "--seed", "7"]) == 0


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_texts(capsys):
    assert ".gguf file" in _help([], capsys)
    ref = _help(["reference"], capsys)
    assert "only with --sample; default 1.0" in ref and "only with --sample; default 0)" in ref
    assert "first non-empty line starts with '{'" in ref and "one prompt per line" in ref


@pytest.mark.parametrize("cmd,argv,flag", [
    ("reference", ["--max-new-tokens", "-3"], "--max-new-tokens must be an integer >= 0, got -3"),
    ("reference", ["--batch-size", "0"], "--batch-size must be"),
    ("reference", ["--top-n", "0"], "--top-n must be"),
    ("reference", ["--sample", "--temperature", "0"], "--temperature must be > 0"),
    ("compare", ["--batch-size", "0"], "--batch-size must be"),
    ("perplexity", ["--context", "0"], "--context must be"),
    ("perplexity", ["--stride", "4", "--context", "16"], "--stride applies to --mode='strided' only"),
    ("tasks", ["--batch-size", "0"], "--batch-size must be"),
])
def test_errors_name_the_flag(cmd, argv, flag, tmp_path, model_dir, prompts_file, capsys):
    ref = str(tmp_path / "ref.pqref")
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.")
    if cmd == "compare":
        assert main(["reference", "--model", model_dir, "--prompts", prompts_file, "--output", ref,
                     "--max-new-tokens", "2", "--top-n", "2"]) == 0
    capsys.readouterr()
    extra = {"reference": ["--prompts", prompts_file], "compare": ["--reference", ref],
             "perplexity": ["--texts", str(text)], "tasks": []}[cmd]
    assert main([cmd, "--model", model_dir, "--output", str(tmp_path / "out")] + extra + argv) == 2
    err = _one_line_error(capsys.readouterr().err, cmd)
    assert flag in err and "_" not in err.split("error: ", 1)[1].split(" ")[0], err


def test_flag_names_keeps_words_paths_and_values():
    import argparse

    from pyquant.cli import flag_names

    p = argparse.ArgumentParser()
    for f in ("--prompt-len", "--gen-len", "--context", "--max-kl", "--top-n"):
        p.add_argument(f)
    assert flag_names("prompt_len + gen_len = 60 + 8 = 68 exceeds the model's context of 64 tokens "
                      "(config.max_position_embeddings)", p) == \
        "--prompt-len + --gen-len = 60 + 8 = 68 exceeds the model's context of 64 tokens (config.max_position_embeddings)"
    assert flag_names("context=99 is longer than the model's max_position_embeddings=64", p) == \
        "--context=99 is longer than the model's max_position_embeddings=64"
    assert flag_names("max_kl must be a finite number >= 0, got -1.0", p) == "--max-kl must be a finite number >= 0, got -1.0"
    assert flag_names("/data/top_n/p.txt: got 'top_n'", p) == "/data/top_n/p.txt: got 'top_n'"


def test_oserror_about_a_path_is_a_one_line_error(monkeypatch, capsys):
    """Any command (report and demo too): an OSError naming a path exits 2 with one line."""
    import pyquant.commands.perplexity as perplexity

    def run(args):
        raise IsADirectoryError(21, "Is a directory", "out.html")

    monkeypatch.setattr(perplexity, "run", run)
    assert main(["perplexity", "--model", "demo", "--texts", "t.txt", "--output", "p.json"]) == 2
    assert capsys.readouterr().err == "pyquant perplexity: error: out.html: Is a directory\n"
