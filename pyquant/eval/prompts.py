"""Reading prompt sets and text corpora, and turning prompts into token ids.

Prompts: a JSONL file with one object per line, ``{"prompt": "..."}`` (plain text) or
``{"messages": [{"role": ..., "content": ...}, ...]}`` (rendered with the tokenizer's chat
template, generation prompt added); any other file is plain text, one prompt per non-empty line.
Texts (perplexity): each file is one document, or a JSONL file with ``{"text": ...}`` per line.
"""
from __future__ import annotations

import json
import os
from typing import Union

Prompt = Union[str, list]  # a plain-text prompt, or a list of chat messages


def jsonl_objects(path: str, text: str) -> "list[tuple[int, dict]]":
    """(line number, object) for each non-blank line of a JSONL file's ``text`` (numbers count the
    blank lines too, as an editor does). ValueError naming ``path:line`` for a line that is not a
    JSON object."""
    out = []
    for n, ln in enumerate(text.splitlines(), 1):
        if not ln.strip():
            continue
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object per line")
        out.append((n, obj))
    return out


def _looks_like_jsonl(path: str, text: str) -> bool:
    first = next((ln for ln in text.splitlines() if ln.strip()), None)
    return first is not None and (path.endswith((".jsonl", ".json")) or first.lstrip().startswith("{"))


def read_prompts(path: str) -> "list[Prompt]":
    """Prompts from ``path`` (JSONL with "prompt" or "messages", or plain text lines).

    Returns a list of strings (plain prompts) and message lists (chat prompts). ValueError if the
    file holds no prompts or a JSONL line has neither key.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not _looks_like_jsonl(path, text):
        prompts: list = [ln for ln in text.splitlines() if ln.strip()]
    else:
        prompts = []
        for n, obj in jsonl_objects(path, text):
            if isinstance(obj.get("messages"), list) and obj["messages"]:
                for m in obj["messages"]:
                    if not isinstance(m, dict) or "role" not in m or "content" not in m:
                        raise ValueError(f"{path}:{n}: each message needs 'role' and 'content'")
                prompts.append(obj["messages"])
            elif isinstance(obj.get("prompt"), str) and obj["prompt"].strip():
                prompts.append(obj["prompt"])
            else:
                raise ValueError(f"{path}:{n}: expected a non-empty 'prompt' string or 'messages' list")
    if not prompts:
        raise ValueError(f"{path}: no prompts (empty prompt set)")
    return prompts


def encode_prompt(tokenizer, prompt: Prompt) -> "list[int]":
    """Token ids of one prompt: chat messages through the tokenizer's chat template (with the
    generation prompt), plain text with the tokenizer's default special tokens. ValueError if empty."""
    if isinstance(prompt, (list, tuple)):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("a 'messages' prompt needs a tokenizer with a chat template")
        ids = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in newer transformers
            ids = ids["input_ids"]
    elif isinstance(prompt, str):
        ids = tokenizer(prompt)["input_ids"]
    else:
        raise ValueError(f"a prompt must be a string or a list of messages, got {type(prompt).__name__}")
    ids = [int(i) for i in ids]
    if not ids:
        raise ValueError(f"prompt {str(prompt)[:40]!r} encodes to no tokens")
    return ids


def read_texts(paths) -> "list[str]":
    """Documents for perplexity: each file is one document, except JSONL files (``.jsonl``, or
    whose first line is a JSON object with "text"), which hold one ``{"text": ...}`` per line.
    ValueError if there are no non-empty documents."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    docs = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            text = f.read()
        if not (str(p).endswith(".jsonl") or text.lstrip().startswith('{"text"')):
            docs.append(text)
            continue
        for n, obj in jsonl_objects(str(p), text):
            if not isinstance(obj.get("text"), str):
                raise ValueError(f"{p}:{n}: expected a 'text' string")
            docs.append(obj["text"])
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError("no texts: every document is empty")
    return docs
