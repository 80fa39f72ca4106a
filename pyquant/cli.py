"""``pyquant`` command line: one subcommand per module in pyquant/commands/.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``,
and ``RESUMES = True`` when an interrupted run keeps its finished work and a rerun resumes.
Bad input exits with code 2 and a one-line message (raise ``UsageError`` or ``ValueError``; a
library's parameter name in the message, ``max_new_tokens``, is shown as the command's flag,
``--max-new-tokens``; an OSError about a path becomes a one-line message too).
Commands check the paths they write before loading any model (pyquant/commands/outputs.py).
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

COMMANDS = ("quantize", "export", "reference", "compare", "perplexity", "tasks", "bench", "report", "demo")


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyquant",
        description="Is this quantized LLM good enough to ship, and what does it buy? "
        "Every --model takes an HF model directory, a pyquant quantized directory, a .gguf file, "
        "or 'demo' (the bundled SmolLM2-135M).",
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
        p.set_defaults(_run=mod.run, _parser=p, _resumes=bool(getattr(mod, "RESUMES", False)))
    return parser


# a lower_case name standing alone (not part of a path, a quoted value or a longer word)
_NAME = re.compile(r"(?<![\w./'\"-])([a-z][a-z0-9]*(?:_[a-z0-9]+)*)(?![\w/'\"-])")


def flag_names(message: str, parser: argparse.ArgumentParser) -> str:
    """``message`` with the library's parameter names replaced by the command's flags
    ("max_new_tokens must be ..." -> "--max-new-tokens must be ..."): a name with an underscore
    wherever it stands alone, a plain word ("context") only where it is followed by "=",
    " must " or " applies" (so "the model's context of 64 tokens" stays)."""
    flags = {a.dest: max(a.option_strings, key=len) for a in parser._actions
             if a.dest != "help" and any(o.startswith("--") for o in a.option_strings)}

    def sub(m):
        name = m.group(1)
        if name in flags and ("_" in name or message.startswith(("=", " must ", " applies"), m.end())):
            return flags[name]
        return name

    return _NAME.sub(sub, message)


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (UsageError, FileNotFoundError) as e:
        print(f"pyquant {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"pyquant {args.command}: error: {flag_names(str(e), args._parser)}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:
            raise
        print(f"pyquant {args.command}: error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        what = ("finished work is kept; rerun the same command to resume" if args._resumes
                else "nothing saved; a rerun starts over")
        print(f"pyquant {args.command}: interrupted ({what})", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
