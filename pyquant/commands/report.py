"""`pyquant report`: merge results files into a self-contained HTML trade-off report."""
from __future__ import annotations

import sys

HELP = "merge compare/perplexity/bench/tasks results into an HTML + Markdown trade-off report with plots"
DESCRIPTION = HELP + """

Writes OUTPUT (HTML, plots embedded), its Markdown twin (same name, .md) and the plots as PNG
files next to it. Each variant gets a verdict against --max-kl (mean KL, nats/token), and the
summary names the cheapest variant that passes.

Files are merged into one row per variant label (--variant of the command that wrote them).
Files with the same label but different model weight fingerprints are refused (rerun one with
--variant NAME); of two files of the same kind and label, the later one on the command line is
used and a line on stderr says so."""


def add_arguments(p):
    from ..report.build import DEFAULT_MAX_KL

    p.add_argument("results", nargs="+", metavar="RESULTS.json", help="results files written by pyquant commands")
    p.add_argument("--output", "-o", default="report.html", help="HTML file to write (default: report.html)")
    p.add_argument("--max-kl", type=float, default=DEFAULT_MAX_KL,
                   help=f"pass threshold on mean KL in nats/token (default {DEFAULT_MAX_KL})")
    p.add_argument("--title", default="pyquant trade-off report", help="page title")


def run(args) -> int:
    from ..report.build import format_table_text, write_report
    from .outputs import check_output

    check_output(args.output, {"RESULTS.json": args.results})
    out = write_report(args.results, args.output, max_kl=args.max_kl, title=args.title)
    rep = out["report"]
    for note in rep.notes:
        print(f"pyquant report: {note}", file=sys.stderr)
    for t in rep.tables:
        print(t.title + "\n" + format_table_text(t) + "\n")
    for _, vd, s in rep.verdict_lines:
        print(f"{vd.upper():<10} {s}")
    print(rep.summary)
    if rep.knee_line:
        print(rep.knee_line)
    print(f"report: {out['html']} (Markdown: {out['markdown']}; {len(out['figures'])} PNG figures)")
    return 0
