"""Render a Report as Markdown (the HTML page's twin); figures are linked as PNG files."""
from __future__ import annotations


def _cell(x) -> str:
    return str(x).replace("|", "\\|")


def _table(t) -> str:
    lines = [f"## {t.title}", "", "| " + " | ".join(_cell(h) for h in t.header) + " |",
             "|" + "|".join([":--"] + ["--:"] * (len(t.header) - 1)) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in t.rows]
    if t.note:
        lines += ["", f"_{t.note}_"]
    return "\n".join(lines)


def render_markdown(report, figure_files) -> str:
    """The report as Markdown (str). ``figure_files``: the PNG file names, one per report figure,
    relative to the Markdown file."""
    from .build import KNEE_DEFINITION

    if len(figure_files) != len(report.figures):
        raise ValueError(f"{len(report.figures)} figures but {len(figure_files)} file names")
    out = [f"# {report.title}", "",
           f"Generated {report.created} by pyquant; threshold: mean KL <= {report.max_kl:g} nats/token.", "",
           f"**{report.summary}**", ""] + ([report.knee_line, ""] if report.knee_line else []) + [
           "## Verdict per variant", ""]
    out += [f"- **{vd.upper()}** {s}" for _, vd, s in report.verdict_lines]
    for t in report.tables:
        out += ["", _table(t)]
    out += ["", "## Figures", ""]
    for f, name in zip(report.figures, figure_files):
        out += [f"![{f.title}]({name})", "", f"_{f.title}._ {f.caption}", ""]
    out += ["## Definitions", "", KNEE_DEFINITION, "", "Sources: " + ", ".join(f"`{s}`" for s in report.sources), ""]
    return "\n".join(out)
