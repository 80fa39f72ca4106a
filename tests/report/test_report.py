"""Report generation from synthetic results files: tables, verdicts, figures, HTML, Markdown, CLI."""
import base64
import os
import re

import pytest

from pyquant.cli import main
from pyquant.report.build import build_report, write_report
from pyquant.report.load import Variant, cost_figures, kl_cdf, kl_curve, load_variants, quality_figures
from pyquant.results import make_results, write_results



def test_merge_by_variant(results_files, VARIANTS):
    vs = load_variants(results_files)
    assert [v.name for v in vs] == list(VARIANTS)
    v = vs[1]
    assert v.compare and v.bench and v.perplexity and len(v.sources) == 3
    q, c = quality_figures(v), cost_figures(v)
    assert q["kl_mean"] == pytest.approx(sum(v.compare["per_token"]["kl"]) / len(v.compare["per_token"]["kl"]))
    assert q["top1_agree"] == pytest.approx(1 - 5 * q["kl_mean"]) and q["ppl_token"] == pytest.approx(10 + 0.2)
    assert q["kl_mean_ci95"][0] < q["kl_mean"] < q["kl_mean_ci95"][1]
    assert c["weight_bytes"] == 135 * 2**20
    assert c["tpot_p50_ms"] == pytest.approx(22.0) and c["ttft_p99_ms"] == pytest.approx(70.0)
    assert c["tokens_per_s"] == {1: pytest.approx(1e3 / 22), 8: pytest.approx(8e3 / 44)}
    assert c["peak_memory_bytes"] == (300 + 135) * 2**20  # batch 1


def test_kl_curve_relative_to_prompt_end():
    # seq 0 (prompt_len 3): rows t=0..4 -> positions -2..2; seq 1 (prompt_len 2): t=0..1 -> -1, 0
    v = Variant("x", compare={"per_token": {"kl": [1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 9.0], "seq": [0] * 5 + [1] * 2,
                                            "pos": [0, 1, 2, 3, 4, 0, 1]},
                              "sequences": [{"prompt_len": 3}, {"prompt_len": 2}]})
    c = kl_curve(v)
    assert c["position"] == [-2, -1, 0, 1, 2]
    assert c["kl"] == [1.0, (2.0 + 7.0) / 2, (3.0 + 9.0) / 2, 4.0, 5.0]
    assert c["boundary"] == -0.5 and c["relative"]
    # without per-token arrays: the stored absolute-position curve, boundary at the median prompt length
    v = Variant("y", compare={"curve": {"position": {"bucket_width": 4, "bucket_start": [0, 8], "mean": [0.5, 0.25]}},
                              "sequences": [{"prompt_len": 5}, {"prompt_len": 9}, {"prompt_len": 7}]})
    c = kl_curve(v)
    assert c["position"] == [1.5, 9.5] and c["kl"] == [0.5, 0.25] and c["boundary"] == 5.5 and not c["relative"]
    assert kl_curve(Variant("z", compare={"stats": {}})) is None


def test_kl_cdf_from_per_token_and_quantiles():
    v = Variant("x", compare={"per_token": {"kl": [0.3, None, 0.1, 0.2, 0.0]}})
    c = kl_cdf(v)
    assert c == {"kl": [0.0, 0.1, 0.2, 0.3], "fraction": [0.25, 0.5, 0.75, 1.0], "tokens": 4}
    v = Variant("y", compare={"kl_quantiles": {"q": [0, 50, 100], "kl": [0.0, 0.01, 0.5]},
                              "stats": {"all": {"tokens": 123}}})
    assert kl_cdf(v) == {"kl": [0.0, 0.01, 0.5], "fraction": [0.0, 0.5, 1.0], "tokens": 123}
    thinned = kl_cdf(Variant("z", compare={"per_token": {"kl": [float(i) for i in range(10000)]}}), limit=100)
    assert len(thinned["kl"]) == 100 and thinned["kl"][0] == 0.0 and thinned["kl"][-1] == 9999.0
    assert thinned["fraction"][-1] == 1.0


@pytest.mark.parametrize("max_kl,cheapest", [(0.007, "int8"), (0.1, "int4-g128"), (0.0, "fp32")])
def test_verdicts_and_cheapest(results_files, max_kl, cheapest, VARIANTS):
    rep = build_report(results_files, max_kl=max_kl, figures=False)
    assert f"by weight memory: {cheapest}" in rep.summary
    assert f"by time per output token, P50 at batch 1: {cheapest}" in rep.summary
    verdicts = {n: vd for n, vd, _ in rep.verdict_lines}
    for n, (kl, _, _) in VARIANTS.items():
        q = quality_figures(next(v for v in load_variants(results_files) if v.name == n))
        expect = "fail" if q["kl_mean"] > max_kl else ("borderline" if q["kl_mean_ci95"][1] > max_kl else "pass")
        assert verdicts[n] == expect


def test_no_variant_passes(results_files):
    rep = build_report(results_files[3:], max_kl=0.001, figures=False)  # without fp32
    assert rep.summary.startswith("No variant passes")


def test_knee_in_captions(results_files):
    rep = build_report(results_files)
    caps = {f.stem: f.caption for f in rep.figures}
    assert set(caps) == {"tradeoff_latency", "tradeoff_memory", "tradeoff_peak", "kl_by_position", "kl_cdf"}
    # fp32 -> int8 is the big saving for little KL; int4 variants buy little more.
    assert "knee: int8" in caps["tradeoff_memory"]
    assert "Pareto front: int4-g128, int4-g32, int8, fp32" in caps["tradeoff_memory"]
    assert "by weight memory: int8" in rep.knee_line


def test_write_report_html_markdown_pngs(results_files, tmp_path, VARIANTS):
    out = write_report(results_files, str(tmp_path / "out" / "report.html"))
    html = open(out["html"]).read()
    for name in VARIANTS:
        assert name in html
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == 5 == len(out["figures"])
    for u in uris:
        assert base64.b64decode(u)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in html and "https://" not in html and "<script" not in html
    md = open(out["markdown"]).read()
    assert out["markdown"].endswith("report.md")
    for name in VARIANTS:
        assert f"| {name} |" in md
    for p in out["figures"]:
        assert os.path.getsize(p) > 1000
        assert f"]({os.path.basename(p)})" in md


def test_missing_keys_are_tolerated(tmp_path):
    p = tmp_path / "a.json"
    write_results(str(p), make_results("compare", {"stats": {"all": {"kl_mean": 0.01}}}, variant="a", machine={}))
    q = tmp_path / "b.json"
    write_results(str(q), make_results("bench", {}, variant="b", complete=False, machine={}))
    out = write_report([str(p), str(q)], str(tmp_path / "r.html"))
    html = open(out["html"]).read()
    assert "n/a" in html and "b (incomplete)" in html  # complete=false is shown, not hidden
    assert out["figures"] == []
    assert "no KL measured" in html


def test_bad_inputs(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a pyquant results file"):
        load_variants([str(bad)])
    with pytest.raises(ValueError, match="no results files"):
        load_variants([])
    p = tmp_path / "novariant.json"
    write_results(str(p), make_results("compare", {}, machine={}))
    with pytest.raises(ValueError, match="no 'variant' label"):
        load_variants([str(p)])


def test_cli(results_files, tmp_path, capsys):
    out = tmp_path / "cli" / "r.html"
    assert main(["report", *results_files, "--output", str(out), "--max-kl", "0.02"]) == 0
    text = capsys.readouterr().out
    assert "int4-g32" in text and str(out) in text and "by weight memory: int4-g32" in text
    assert out.exists() and (tmp_path / "cli" / "r.md").exists() and (tmp_path / "cli" / "r_kl_cdf.png").exists()
    assert main(["report", str(tmp_path / "missing.json"), "--output", str(out)]) == 2
    assert main(["report", *results_files, "--output", str(tmp_path / "r.txt")]) == 2
