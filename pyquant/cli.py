"""``pyquant`` command line: one subcommand per module in pyquant/commands/.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Bad input exits with code 2 and a one-line message (raise ``UsageError`` or ``ValueError``).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = ("quantize", "reference", "compare", "perplexity", "tasks", "bench", "report", "demo")


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyquant",
        description="Is this quantized LLM good enough to ship, and what does it buy? "
        "Every --model takes an HF model directory, a pyquant quantized directory, or 'demo'.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"pyquant.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"pyquant.commands.{name}":
                raise
            continue  # command not available in this build
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (UsageError, ValueError, FileNotFoundError) as e:
        print(f"pyquant {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pyquant {args.command}: interrupted (finished work is kept; rerun to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
