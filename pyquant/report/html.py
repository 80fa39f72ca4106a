"""Render a Report as one self-contained HTML page: inline CSS, figures embedded as base64
PNG data: URIs, no scripts, no network."""
from __future__ import annotations

import base64
from html import escape

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d2329}
main{max-width:1100px;margin:0 auto;padding:24px 28px 48px;background:#fff;box-sizing:border-box}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:28px 0 8px;border-bottom:1px solid #e3e6ea;padding-bottom:4px}
.meta{color:#66707a;font-size:.85em;margin-bottom:16px}
.summary{background:#eef6ee;border-left:4px solid #2e8b3d;padding:10px 14px;font-weight:600;margin:12px 0}
.summary.none{background:#fbeeee;border-left-color:#c0392b}
.summary.unknown{background:#f0f2f5;border-left-color:#777}
ul.verdicts{list-style:none;padding:0;margin:6px 0}ul.verdicts li{padding:3px 0;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.88em;overflow-wrap:anywhere}
.pass{color:#2e7d32;font-weight:700}.fail{color:#c0392b;font-weight:700}.borderline{color:#b8860b;font-weight:700}.unknown{color:#777;font-weight:700}
.tablewrap{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.86em;margin:4px 0}
th,td{border:1px solid #dde1e5;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f0f2f5}td:first-child,th:first-child{text-align:left;font-weight:600}
p.note{color:#555;font-size:.82em;margin:4px 0 0;max-width:100%}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:18px}
figure{margin:0;min-width:0}
figure img{width:100%;height:auto;border:1px solid #e3e6ea}
figcaption{font-size:.82em;color:#444;margin-top:4px}
code{font-size:.9em}p.knee{margin:4px 0 0;font-size:.92em}
"""


def _table(t) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>" for r in t.rows)
    note = f'<p class="note">{escape(t.note)}</p>' if t.note else ""
    return (f"<h2>{escape(t.title)}</h2><div class=\"tablewrap\"><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>{note}")


def render_html(report) -> str:
    """The report as an HTML document (str); every figure is an <img src="data:image/png;base64,...">."""
    from .build import KNEE_DEFINITION

    verdicts = "".join(
        f'<li><span class="{escape(vd)}">{escape(vd.upper())}</span> {escape(s)}</li>' for _, vd, s in report.verdict_lines)
    if all(vd == "unknown" for _, vd, _ in report.verdict_lines):
        none = " unknown"  # no KL measured: neither a pass nor a failure
    else:
        none = " none" if report.summary.startswith("No variant") else ""
    figs = "".join(
        f'<figure><img alt="{escape(f.title)}" src="data:image/png;base64,{base64.b64encode(f.png).decode("ascii")}">'
        f"<figcaption><b>{escape(f.title)}.</b> {escape(f.caption)}</figcaption></figure>" for f in report.figures)
    sources = ", ".join(f"<code>{escape(s)}</code>" for s in report.sources)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(report.title)}</title><style>{_CSS}</style></head>
<body><main>
<h1>{escape(report.title)}</h1>
<div class="meta">Generated {escape(report.created)} by pyquant · variants: {escape(", ".join(report.variants))} · threshold: mean KL &le; {report.max_kl:g} nats/token</div>
<div class="summary{none}">{escape(report.summary)}</div>
{f'<p class="knee">{escape(report.knee_line)}</p>' if report.knee_line else ""}
<h2>Verdict per variant</h2><ul class="verdicts">{verdicts}</ul>
{"".join(_table(t) for t in report.tables)}
<h2>Figures</h2><div class="figs">{figs or "<p>No figure: the results hold no plottable data.</p>"}</div>
<h2>Definitions</h2>
<p class="note">KL: top-N KL divergence of the candidate from the reference on the reference's own tokens, with an
"everything else" bucket (a lower bound of the full-vocabulary KL). Reject (TV): total-variation distance over the
same buckets, the rejection probability of speculative sampling with the candidate as draft. Verdict: PASS when the
mean KL is at most the threshold; BORDERLINE when it passes but its 95% interval reaches past it. {escape(KNEE_DEFINITION)}</p>
<p class="note">Sources: {sources}</p>
</main></body></html>
"""
