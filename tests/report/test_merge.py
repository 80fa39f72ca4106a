"""Merging results files by variant label: different models under one label are refused, a later
file of the same kind replaces an earlier one and says so; the summary when no KL was measured."""
import pytest

from pyquant.cli import main
from pyquant.report.build import NO_KL_IN_COMPARE_SUMMARY, NO_KL_SUMMARY, build_report
from pyquant.report.load import load_variants, quality_figures

LABEL = "int4-g128"
BENCH = {"memory": {"weights": {"total": 72 * 2**20}}}


def _compare(kl):
    return {"stats": {"all": {"kl_mean": kl}}}


def _model(fp):
    """A results file's "model": None (an old file without one), or with that fingerprint (maybe None)."""
    return None if fp == "absent" else {"name": "m", "fingerprint": fp}


def test_one_label_two_models_is_refused(write_result, tmp_path, capsys):
    a = write_result("a.json", "compare", _compare(0.001), LABEL, _model("aaa"))
    old = write_result("old.json", "perplexity", {"total": {"token_perplexity": 10.0}}, LABEL, _model(None))
    b = write_result("b.json", "bench", BENCH, LABEL, _model("bbb"))
    with pytest.raises(ValueError) as e:
        load_variants([a, old, b])  # old.json (no fingerprint) sits between them: no excuse to merge
    msg = str(e.value)
    assert f"'{LABEL}' labels two different models ({a}, {b} have different weight fingerprints)" in msg
    assert "--variant" in msg and old not in msg and "\n" not in msg
    # same kind, different models: refused too, not "replaced"
    a2 = write_result("a2.json", "compare", _compare(0.002), LABEL, _model("ccc"))
    with pytest.raises(ValueError, match="labels two different models"):
        load_variants([a, a2])
    out = tmp_path / "r.html"
    assert main(["report", a, old, b, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyquant report: error: ") and a in err and b in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("fp_a,fp_b", [("aaa", "aaa"), (None, None), ("absent", "aaa"), ("aaa", "absent")])
def test_same_kind_twice_later_wins_and_says_so(write_result, tmp_path, capsys, fp_a, fp_b):
    a = write_result("a.json", "compare", _compare(0.001), LABEL, _model(fp_a), complete=False)
    bench = write_result("bench.json", "bench", BENCH, LABEL, _model(fp_a))
    b = write_result("b.json", "compare", _compare(0.002), LABEL, _model(fp_b))
    note = f"{b} replaces {a} (both compare results for '{LABEL}')"
    [v] = load_variants([a, bench, b])
    assert quality_figures(v)["kl_mean"] == 0.002
    assert v.replaced == [note] and v.sources == [bench, b] and v.incomplete == []  # a.json's data is gone
    out = tmp_path / "r.html"
    assert main(["report", a, bench, b, "--output", str(out)]) == 0
    cap = capsys.readouterr()
    assert cap.err == f"pyquant report: {note}\n"
    assert "mean KL 0.002" in cap.out
    md = (tmp_path / "r.md").read_text()
    assert f"`{b}`" in md and f"`{a}`" not in md  # Sources: only the file shown


def test_files_without_fingerprint_merge(write_result, capsys):
    paths = [write_result("c.json", "compare", _compare(0.001), LABEL, _model(None)),
             write_result("b.json", "bench", BENCH, LABEL, _model("absent")),
             write_result("p.json", "perplexity", {"total": {"token_perplexity": 10.0}}, LABEL, _model("aaa")),
             write_result("t.json", "tasks", {"summary": {"all": {"n": 10, "acc": 0.5}}}, LABEL, {"name": "m"})]
    [v] = load_variants(paths)
    assert v.compare and v.bench and v.perplexity and v.tasks and v.sources == paths and v.replaced == []
    assert v.model["fingerprint"] == "aaa"  # the one fingerprint known for this label
    rep = build_report(paths, figures=False)
    assert rep.variants == [LABEL] and rep.notes == []


def test_no_kl_measured_summary(results_files, write_result, tmp_path, capsys):
    bench = [p for p in results_files if p.endswith(".bench.json")]
    assert NO_KL_SUMMARY == "No divergence (compare) results given: no KL verdict."
    assert build_report(bench, figures=False).summary == NO_KL_SUMMARY
    out = tmp_path / "out" / "r.html"
    assert main(["report", *bench, "--output", str(out)]) == 0
    text = capsys.readouterr().out
    html, md = out.read_text(), (tmp_path / "out" / "r.md").read_text()
    assert NO_KL_SUMMARY in text and f'<div class="summary unknown">{NO_KL_SUMMARY}</div>' in html
    assert f"**{NO_KL_SUMMARY}**" in md
    assert not any("No variant passes" in s for s in (text, html, md))
    # compare results without a mean KL: said as such
    c = write_result("c.json", "compare", {"stats": {}}, "int8")
    assert build_report([c, *bench], figures=False).summary == NO_KL_IN_COMPARE_SUMMARY
    # one variant measured and failing: the old sentence stands
    c = write_result("c.json", "compare", _compare(0.5), "int8")
    rep = build_report([c, *bench], figures=False)
    assert rep.summary == "No variant passes mean KL <= 0.007."


def test_help_names_every_kind(capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", "--help"])
    assert e.value.code == 0
    assert "compare/perplexity/bench/tasks results" in capsys.readouterr().out


def test_bad_output_is_refused_before_reading(write_result, tmp_path, capsys):
    c = write_result("c.json", "compare", _compare(0.001), LABEL)
    (tmp_path / "d.html").mkdir()
    assert main(["report", c, "--output", str(tmp_path / "d.html")]) == 2
    err = capsys.readouterr().err
    assert "--output" in err and "is a directory: give a file name" in err and len(err.splitlines()) == 1
