"""The report's task accuracy tables from synthetic "tasks" results (the layout pyquant tasks writes)."""
import pytest

from pyquant.report.build import build_report, write_report
from pyquant.report.load import Variant, load_variants, task_figures
from pyquant.results import make_results, write_results

HEADER = ["variant", "accuracy [95% CI]", "acc_norm", "Δ acc vs baseline [95% CI]",
          "flips (right→wrong / wrong→right)", "flip rate", "McNemar p", "items"]


def _summary(n, acc, ci, acc_norm, nonfinite=0):
    return {"n": n, "nonfinite": nonfinite, "acc": acc, "acc_ci95": list(ci), "acc_norm": acc_norm,
            "acc_norm_ci95": [acc_norm - 0.05, acc_norm + 0.05]}


def _flip(n, acc_base, acc, c2w, w2c, p, ci):
    return {"n": n, "acc_baseline": acc_base, "acc": acc, "delta_acc": acc - acc_base, "delta_acc_ci95": list(ci),
            "correct_to_wrong": c2w, "wrong_to_correct": w2c, "flips": c2w + w2c, "flip_rate": (c2w + w2c) / n,
            "changed": c2w + w2c + 1, "changed_rate": (c2w + w2c + 1) / n, "mcnemar_p": p}


def _tasks_data(summary, flips_acc=None):
    flips = None if flips_acc is None else {
        "baseline": {"variant": "fp32", "path": "fp32.tasks.json"}, "acc": flips_acc, "acc_norm": flips_acc}
    return {"settings": {"tasks": list(summary)}, "summary": summary, "items": [], "flips": flips, "throughput": {}}


# fp32 is the baseline (flips null); int8 and int4-g32 are candidates; int4-g128 has no tasks results.
TASKS = {
    "fp32": _tasks_data({"all": _summary(200, 0.7125, (0.6461, 0.7703), 0.7350),
                         "arc_easy": _summary(100, 0.7400, (0.6462, 0.8154), 0.7600),
                         "hellaswag": _summary(100, 0.6850, (0.5895, 0.7672), 0.7100)}),
    "int8": _tasks_data({"all": _summary(200, 0.7050, (0.6384, 0.7637), 0.7300),
                         "arc_easy": _summary(100, 0.7300, (0.6357, 0.8073), 0.7500),
                         "hellaswag": _summary(100, 0.6800, (0.5838, 0.7628), 0.7100)},
                        {"all": _flip(200, 0.7125, 0.7050, 5, 2, 0.453125, (-0.0301, 0.0151)),
                         "arc_easy": _flip(100, 0.74, 0.73, 3, 1, 0.625, (-0.05, 0.03)),
                         "hellaswag": _flip(100, 0.685, 0.68, 2, 1, 1.0, (-0.04, 0.03))}),
    "int4-g32": _tasks_data({"all": _summary(200, 0.6400, (0.5713, 0.7035), 0.6650, nonfinite=3),
                             "arc_easy": _summary(100, 0.6600, (0.5628, 0.7449), 0.6900),
                             "hellaswag": _summary(100, 0.6200, (0.5221, 0.7091), 0.6400)},
                            {"all": _flip(200, 0.7125, 0.6400, 21, 6, 0.00604, (-0.1051, -0.0399)),
                             "arc_easy": _flip(100, 0.74, 0.66, 11, 3, 0.0574, (-0.13, -0.03)),
                             "hellaswag": _flip(100, 0.685, 0.62, 10, 3, 0.0923, (-0.11, -0.02))}),
}


def _write_tasks(tmp_path, tasks):
    paths = []
    for name, data in tasks.items():
        p = tmp_path / f"{name}.tasks.json"
        write_results(str(p), make_results("tasks", data, variant=name, machine={}))
        paths.append(str(p))
    return paths


def _table(rep, title):
    return next((t for t in rep.tables if t.title == title), None)


def test_task_figures():
    f = task_figures(Variant("int4-g32", tasks=TASKS["int4-g32"]))
    assert f["acc"] == 0.64 and f["acc_ci95"] == (0.5713, 0.7035) and f["acc_norm"] == 0.665
    assert f["items"] == 200 and f["nonfinite"] == 3 and f["baseline"] == "fp32"
    assert f["delta_acc"] == pytest.approx(-0.0725) and f["delta_acc_ci95"] == (-0.1051, -0.0399)
    assert (f["correct_to_wrong"], f["wrong_to_correct"], f["mcnemar_p"]) == (21, 6, 0.00604)
    assert f["flip_rate"] == pytest.approx(0.135) and f["changed_rate"] == pytest.approx(0.14)
    assert list(f["per_task"]) == ["arc_easy", "hellaswag"]
    assert f["per_task"]["hellaswag"] == {"acc": 0.62, "acc_ci95": (0.5221, 0.7091), "n": 100,
                                          "flip_rate": pytest.approx(0.13), "delta_acc": pytest.approx(-0.065)}
    base = task_figures(Variant("fp32", tasks=TASKS["fp32"]))
    assert base["acc"] == 0.7125 and base["baseline"] is None and base["delta_acc"] is None
    assert base["per_task"]["arc_easy"]["flip_rate"] is None
    assert task_figures(Variant("none"))["acc"] is None


def test_task_tables_in_report(results_files, tmp_path):
    rep = build_report(results_files + _write_tasks(tmp_path, TASKS), figures=False)
    titles = [t.title for t in rep.tables]
    assert titles[:3] == ["Quality (vs the full-precision reference)", "Task accuracy", "Task accuracy by task"]
    t = rep.tables[1]
    assert t.header == HEADER
    rows = {r[0]: r for r in t.rows}
    assert rows["fp32"] == ["fp32", "71.25% [64.61, 77.03]", "73.50%", "baseline", "n/a", "n/a", "n/a", "200"]
    assert rows["int8"] == ["int8", "70.50% [63.84, 76.37]", "73.00%", "-0.75 pp [-3.01, +1.51]", "7 (5 / 2)",
                            "3.50%", "0.453", "200"]
    assert rows["int4-g32"] == ["int4-g32", "64.00% [57.13, 70.35]", "66.50%", "-7.25 pp [-10.51, -3.99]",
                                "27 (21 / 6)", "13.50%", "0.00604", "200 (+3 non-finite left out)"]
    assert rows["int4-g128"] == ["int4-g128"] + ["n/a"] * 7  # no tasks results
    assert "Wilson" in t.note and "Dutta et al., 2024" in t.note and "McNemar" in t.note and "Baseline: fp32." in t.note
    by_task = rep.tables[2]
    assert by_task.header == ["variant", "arc_easy", "hellaswag"]
    rows = {r[0]: r[1:] for r in by_task.rows}
    assert rows["fp32"] == ["74.00%", "68.50%"]
    assert rows["int8"] == ["73.00% (4.00%)", "68.00% (3.00%)"]
    assert rows["int4-g32"] == ["66.00% (14.00%)", "62.00% (13.00%)"]
    assert rows["int4-g128"] == ["n/a", "n/a"]
    lines = {n: s for n, _, s in rep.verdict_lines}
    assert lines["int8"].endswith(". Task accuracy 70.50% (-0.75 pp vs fp32, 3.50% of answers flipped).")
    assert lines["fp32"].endswith(". Task accuracy 71.25%.")
    assert "Task accuracy" not in lines["int4-g128"]


def test_rendered_html_and_markdown(results_files, tmp_path):
    out = write_report(results_files + _write_tasks(tmp_path, TASKS), str(tmp_path / "r.html"))
    md, html = open(out["markdown"], encoding="utf-8").read(), open(out["html"], encoding="utf-8").read()
    assert "## Task accuracy by task" in md and "| int8 | 70.50% [63.84, 76.37] | 73.00% |" in md
    assert "<h2>Task accuracy</h2>" in html and "<td>7 (5 / 2)</td>" in html


def test_by_task_table_only_with_several_tasks(results_files, tmp_path):
    one = {n: _tasks_data({k: v for k, v in d["summary"].items() if k != "hellaswag"},
                          d["flips"] and {k: v for k, v in d["flips"]["acc"].items() if k != "hellaswag"})
           for n, d in TASKS.items()}
    titles = [t.title for t in build_report(results_files + _write_tasks(tmp_path, one), figures=False).tables]
    assert "Task accuracy" in titles and "Task accuracy by task" not in titles
    titles = [t.title for t in build_report(results_files, figures=False).tables]
    assert not any(t.startswith("Task accuracy") for t in titles)  # no tasks results: no table


def test_tasks_only_files(tmp_path):
    vs = load_variants(_write_tasks(tmp_path, TASKS))
    assert [v.name for v in vs] == list(TASKS)
    assert all(v.tasks and v.compare is None and v.bench is None for v in vs)
    rep = build_report([p for v in vs for p in v.sources], figures=False)
    assert _table(rep, "Task accuracy") is not None
    assert {n: vd for n, vd, _ in rep.verdict_lines} == {n: "unknown" for n in TASKS}
    p = tmp_path / "ref.json"
    write_results(str(p), make_results("reference", {}, variant="fp32", machine={}))
    with pytest.raises(ValueError, match="bench or tasks results"):
        load_variants([str(p)])


@pytest.mark.parametrize("data", [
    {"summary": {"all": {"acc": "high", "n": "many", "acc_ci95": ["a"], "nonfinite": None},
                 "t1": "oops", "t2": {"acc": float("nan")}},
     "flips": {"baseline": "fp32", "acc": {"all": {"correct_to_wrong": "x", "wrong_to_correct": 2,
                                                   "delta_acc": [1], "delta_acc_ci95": {"lo": "a"}}, "t1": 3}}},
    {"summary": None, "flips": 5},
    {"summary": {"all": {"acc": 0.5}}, "flips": {"baseline": None, "acc": None}},
    {"flips": {"acc": {"all": {"delta_acc": 0.01, "flip_rate": "0.1"}}}},
    "not a dict",
])
def test_malformed_tasks_do_not_raise(tmp_path, data):
    p = tmp_path / "x.tasks.json"
    write_results(str(p), make_results("tasks", data, variant="x", machine={}))
    f = task_figures(load_variants([str(p)])[0])
    assert all(f[k] is None for k in ("items", "correct_to_wrong", "baseline", "delta_acc_ci95", "mcnemar_p"))
    out = write_report([str(p)], str(tmp_path / "r.html"))
    t = _table(out["report"], "Task accuracy")
    assert t is not None and len(t.rows) == 1 and t.rows[0][4] == "n/a"
