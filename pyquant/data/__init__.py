"""Built-in data written for this project, shipped inside the package.

prompts.jsonl    24 prompts for reference collection: instructions, facts with numbers, code,
                 and multi-turn chats ({"prompt": ...} or {"messages": [...]} per line).
perplexity.txt   an original text of about 2,800 words (plain English prose with numbers and
                 dates) for perplexity.
tasks.jsonl      original multiple-choice questions in a few small tasks, for task accuracy and flips
                 ({"id", "task", "context", "choices", "answer"} per line).
calibration.txt  an original text of about 7,400 words in 20 varied pieces (explanations, a story,
                 instructions, a recipe, a report, chats, code, a poem) for GPTQ calibration; it
                 shares no passage or narrow topic with the three evaluation sets above.
"""
from __future__ import annotations

import os

_DIR = os.path.dirname(os.path.abspath(__file__))


def path(name: str) -> str:
    """Absolute path of a built-in data file; ValueError if there is no such file."""
    p = os.path.join(_DIR, name)
    if os.path.basename(name) != name or not os.path.isfile(p):
        raise ValueError(f"no built-in data file {name!r} (have: {sorted(f for f in os.listdir(_DIR) if not f.endswith('.py'))})")
    return p


def prompts_path() -> str:
    """Path of the built-in prompt set (JSONL)."""
    return path("prompts.jsonl")


def perplexity_text_path() -> str:
    """Path of the built-in perplexity text (UTF-8 plain text, one document)."""
    return path("perplexity.txt")


def tasks_path() -> str:
    """Path of the built-in multiple-choice task set (JSONL)."""
    return path("tasks.jsonl")


def calibration_text_path() -> str:
    """Path of the built-in GPTQ calibration text (UTF-8 plain text, about 9,600 SmolLM2 tokens)."""
    return path("calibration.txt")
