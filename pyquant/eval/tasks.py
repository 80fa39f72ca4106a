"""Multiple-choice task accuracy, scored the lm-evaluation-harness way, and flips against a baseline.

Items: a JSONL file, one object per line: ``{"id": "...", "task": "...", "context": "...",
"choices": ["...", ...], "answer": i}`` ("id" defaults to the file name and line number, "task" to
the file name). ``pyquant/data/tasks.jsonl`` is a small bundled set (read as "demo").

Scoring is lm-eval 0.4's ``multiple_choice``: the continuation of choice c is ``delimiter + c``;
trailing whitespace of the context moves to the continuation; context and context + continuation
are tokenized with the tokenizer's default special tokens (none when the text already starts with
BOS) and the continuation's tokens are the whole's past the context's (an empty context becomes
the prefix token, BOS else EOS); the input is cut from the left to ``max_length`` tokens. The
log-likelihood of a choice is the sum of its tokens' log-probs (nats). ``acc``: the argmax of the
log-likelihoods is the answer; ``acc_norm``: the argmax of log-likelihood / len(choice) (characters);
ties go to the first choice, as in lm-eval. Intervals are Wilson score 95%.

Flips ("Accuracy is not all you need", Dutta et al. 2024): items that exactly one of the baseline
(the full-precision reference) and the candidate answer correctly. A small accuracy difference can
hide many of them. McNemar's exact test on those items gives the p-value of "same accuracy".
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .. import data
from ..models import final_hidden_states, lm_head, model_fingerprint, tokenizer_fingerprint
from ..ops.stream import stream_logprobs
from ..results import changed_settings
from .collect import forced_hidden, right_padded
from .perplexity import prefix_token
from .prompts import jsonl_objects

METRICS = ("acc", "acc_norm")
Z95 = 1.959963984540054


def read_tasks(paths) -> "list[dict]":
    """Items from JSONL task files ("demo" = the bundled set), checked: each a dict with "id",
    "task", "context", "choices" (>= 2 distinct strings) and "answer" (an index into choices).
    ValueError naming the file and line of the first bad item, or a repeated id."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    if not paths:
        raise ValueError("no task files given")
    items, seen = [], {}
    for path in paths:
        path = data.tasks_path() if path == "demo" else path
        name = os.path.splitext(os.path.basename(path))[0]
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for n, obj in jsonl_objects(path, text):
            where = f"{path}:{n}"
            items.append(_check_item(obj, where, f"{name}-{n}", name))
            first = seen.setdefault(items[-1]["id"], where)
            if first != where:
                raise ValueError(f"{where}: id {items[-1]['id']!r} already used at {first}")
    if not items:
        raise ValueError(f"no task items in {', '.join(paths)}")
    return items


def _check_item(obj, where: str, default_id: str, default_task: str) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object")
    ctx, choices, answer = obj.get("context"), obj.get("choices"), obj.get("answer")
    if not isinstance(ctx, str):
        raise ValueError(f"{where}: \"context\" must be a string")
    if (not isinstance(choices, list) or len(choices) < 2
            or not all(isinstance(c, str) and c for c in choices)):
        raise ValueError(f"{where}: \"choices\" must be a list of at least 2 non-empty strings")
    if len(set(choices)) != len(choices):
        raise ValueError(f"{where}: \"choices\" has a repeated choice")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise ValueError(f"{where}: \"answer\" must be an index into choices (0..{len(choices) - 1}), got {answer!r}")
    return {"id": str(obj.get("id", default_id)), "task": str(obj.get("task", default_task)), "context": ctx,
            "choices": list(choices), "answer": answer}


def _encode(tokenizer, text: str) -> "list[int]":
    """lm-eval's tok_encode: the tokenizer's default special tokens, unless text starts with BOS."""
    bos = tokenizer.bos_token
    return list(tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"])


def encode_choice(tokenizer, context: str, continuation: str, prefix: int) -> "tuple[list[int], list[int]]":
    """(context tokens, continuation tokens) as lm-eval's loglikelihood makes them (see the module doc)."""
    if not context:
        return [prefix], _encode(tokenizer, continuation)
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole, ctx = _encode(tokenizer, context + continuation), _encode(tokenizer, context)
    return ctx, whole[len(ctx):]


def wilson_ci(k: int, n: int, z: float = Z95) -> "list[float]":
    """Wilson score interval of a proportion k/n ([nan, nan] when n = 0)."""
    if n <= 0:
        return [float("nan"), float("nan")]
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [max(0.0, c - h), min(1.0, c + h)]


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (1.0 when there are none)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def _predictions(loglik: "list[float]", choices: "list[str]") -> "tuple[int, int] | tuple[None, None]":
    ll = np.asarray(loglik, dtype=np.float64)
    if not np.all(np.isfinite(ll)):
        return None, None
    return int(np.argmax(ll)), int(np.argmax(ll / np.array([float(len(c)) for c in choices])))


def _summary(items: "list[dict]") -> dict:
    scored = [it for it in items if it["pred"] is not None]
    out = {"n": len(scored), "nonfinite": len(items) - len(scored)}
    for m, key in (("acc", "pred"), ("acc_norm", "pred_norm")):
        k = sum(it[key] == it["answer"] for it in scored)
        out[m] = k / len(scored) if scored else float("nan")
        out[m + "_ci95"] = wilson_ci(k, len(scored))
    return out


def _by_task(entries: list, fn: Callable, task_of: Callable = lambda it: it["task"]) -> dict:
    """{"all": fn(entries)}, plus {task: fn(that task's entries)} when there are several tasks."""
    tasks = list(dict.fromkeys(task_of(e) for e in entries))
    out = {"all": fn(entries)}
    if len(tasks) > 1:
        out.update({t: fn([e for e in entries if task_of(e) == t]) for t in tasks})
    return out


def _flip_stats(pairs: "list[tuple[dict, dict]]", key: str) -> dict:
    """Flip statistics over (baseline item, candidate item) pairs judged by prediction ``key``."""
    pairs = [(b, c) for b, c in pairs if b[key] is not None and c[key] is not None]
    n = len(pairs)
    rb = np.array([b[key] == b["answer"] for b, _ in pairs], dtype=bool)
    rc = np.array([c[key] == c["answer"] for _, c in pairs], dtype=bool)
    c2w, w2c = int(np.sum(rb & ~rc)), int(np.sum(~rb & rc))
    changed = sum(b[key] != c[key] for b, c in pairs)
    nan = float("nan")
    delta = (w2c - c2w) / n if n else nan
    # paired difference of proportions, normal approximation: d_i in {-1, 0, 1}
    half = Z95 * math.sqrt(max((c2w + w2c) / n - delta * delta, 0.0) / n) if n else nan
    return {"n": n, "acc_baseline": float(rb.mean()) if n else nan, "acc": float(rc.mean()) if n else nan,
            "delta_acc": delta, "delta_acc_ci95": [delta - half, delta + half],
            "correct_to_wrong": c2w, "wrong_to_correct": w2c, "flips": c2w + w2c,
            "flip_rate": (c2w + w2c) / n if n else nan, "changed": changed, "changed_rate": changed / n if n else nan,
            "mcnemar_p": mcnemar_exact_p(c2w, w2c)}


@dataclasses.dataclass
class TaskResult:
    """Per-item scores of one model on a task set, with accuracies and (optionally) flips.

    items: per item {"id", "task", "answer", "loglik" [choices] (nats), "tokens" [choices]
    (continuation tokens scored), "pred", "pred_norm" (None when a log-likelihood is NaN/Inf: such
    items are counted in ``nonfinite`` and left out of every figure)}. settings: how it was scored.
    """

    items: list
    settings: dict = dataclasses.field(default_factory=dict)
    flips: Optional[dict] = None

    def summary(self) -> dict:
        """{"all": S, task: S, ...} (tasks only when there are several): S = {"n", "nonfinite",
        "acc", "acc_ci95", "acc_norm", "acc_norm_ci95"}; accuracies are fractions 0..1."""
        return _by_task(self.items, _summary)

    def compare_with(self, baseline: "TaskResult", label: str = "baseline", path: str = "") -> dict:
        """Flips of this result against ``baseline`` (the reference model's result on the same items);
        stores and returns {"baseline": {"variant", "path"}, "acc": {"all": F, task: F}, "acc_norm": ...}.
        F = {"n", "acc_baseline", "acc", "delta_acc" (this minus baseline), "delta_acc_ci95",
        "correct_to_wrong", "wrong_to_correct", "flips", "flip_rate", "changed", "changed_rate",
        "mcnemar_p"}. ValueError unless both hold the same items (ids, answers, choice counts)."""
        base = {it["id"]: it for it in baseline.items}
        mine = {it["id"]: it for it in self.items}
        if set(base) != set(mine):
            missing, extra = sorted(set(base) - set(mine)), sorted(set(mine) - set(base))
            raise ValueError(f"the baseline was scored on other items ({len(missing)} missing here, e.g. "
                             f"{missing[:3]}; {len(extra)} not in the baseline, e.g. {extra[:3]})")
        for i, it in mine.items():
            b = base[i]
            if b["answer"] != it["answer"] or len(b["loglik"]) != len(it["loglik"]) or b["task"] != it["task"]:
                raise ValueError(f"item {i!r} differs from the baseline's (task, answer or number of choices)")
        pairs = [(base[it["id"]], it) for it in self.items]
        self.flips = {"baseline": {"variant": label, "path": path}}
        for m, key in (("acc", "pred"), ("acc_norm", "pred_norm")):
            self.flips[m] = _by_task(pairs, lambda ps, key=key: _flip_stats(ps, key), lambda p: p[1]["task"])
        return self.flips

    def to_dict(self) -> dict:
        """JSON-ready: {"settings", "summary", "items", "flips"}."""
        return {"settings": self.settings, "summary": self.summary(), "items": self.items, "flips": self.flips}

    @classmethod
    def from_dict(cls, data: dict) -> "TaskResult":
        """Back from ``to_dict()`` (the ``data`` of a tasks results file)."""
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise ValueError("not tasks results: no 'items' list")
        return cls(items=data["items"], settings=data.get("settings") or {}, flips=data.get("flips"))

    def table(self) -> str:
        """A short human-readable summary: accuracy per task and, with a baseline, flips."""
        head = ["task", "items", "acc [95% CI]", "acc_norm"]
        if self.flips:
            head += ["flips (R->W / W->R)", "delta acc (McNemar p)"]
        rows, summary = [head], self.summary()
        for t, v in summary.items():
            lo, hi = v["acc_ci95"]
            row = [t, str(v["n"]), f"{100 * v['acc']:.2f}% [{100 * lo:.1f}, {100 * hi:.1f}]", f"{100 * v['acc_norm']:.2f}%"]
            f = (self.flips or {}).get("acc", {}).get(t)
            if f:
                row += [f"{f['flips']} ({f['correct_to_wrong']} / {f['wrong_to_correct']})",
                        f"{100 * f['delta_acc']:+.2f} pts (p={f['mcnemar_p']:.3g})"]
            rows.append(row)
        widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        nonfinite = summary["all"]["nonfinite"]
        if nonfinite:
            lines.append(f"{nonfinite} items with NaN/Inf log-likelihoods left out")
        return "\n".join(lines)


def _item_requests(tokenizer, item: dict, delimiter: str, prefix: int, max_length: int) -> "list[tuple[list[int], int]]":
    """(input tokens, continuation length) per choice; input = (context + continuation)[-(L+1):][:-1]."""
    out = []
    for choice in item["choices"]:
        ctx, cont = encode_choice(tokenizer, item["context"], delimiter + choice, prefix)
        if not cont:
            raise ValueError(f"item {item['id']!r}: choice {choice!r} adds no tokens to the context")
        full = (ctx + cont)[-(max_length + 1):]
        out.append((full, min(len(cont), len(full) - 1)))
    return out


def _score_batch(model, weight, reqs: "list[tuple[list[int], int]]") -> "list[float]":
    """Sum of log-probs of each request's last k tokens, one forward pass for the batch."""
    hidden, _ = forced_hidden(model, [full[:-1] for full, _ in reqs])
    rows, targets = [], []
    for b, (full, k) in enumerate(reqs):
        n = len(full) - 1
        rows.append(hidden[b, n - k:n])
        targets += full[-k:]
    return _sum_logprobs(weight, rows, targets, reqs)


def _shared_prefix(seqs: "list[list[int]]") -> int:
    """How many leading tokens every sequence shares, short of each one's last."""
    p, end = 0, min(len(q) for q in seqs) - 1
    while p < end and all(q[p] == seqs[0][p] for q in seqs):
        p += 1
    return p


def _score_shared(model, weight, reqs_per_item: "list[list[tuple[list[int], int]]]",
                  prefixes: "list[int]") -> "list[float] | None":
    """_score_batch for items whose choices' inputs share their first ``prefixes[i]`` tokens: the
    items' shared tokens run once, as one right-padded batch; its KV cache, each item's row
    repeated for each of its choices, serves the choices' remaining tokens, another right-padded
    batch that attends past the prefix padding (attention mask) and continues each item's
    positions (position ids). None where the model's cache cannot be repeated so (then the caller
    runs the padded batch)."""
    dev = model.device
    seqs = [[full[:-1] for full, _ in reqs] for reqs in reqs_per_item]
    ids, pmask = right_padded([qs[0][:p] for qs, p in zip(seqs, prefixes)])
    hid_p, cache = final_hidden_states(model, ids.to(dev), attention_mask=pmask.to(dev), use_cache=True)
    if not hasattr(cache, "batch_select_indices"):
        return None
    item_of = [i for i, qs in enumerate(seqs) for _ in qs]
    cache.batch_select_indices(torch.tensor(item_of, device=dev))
    sids, smask = right_padded([q[prefixes[i]:] for i, qs in enumerate(seqs) for q in qs])
    mask = torch.cat([pmask[item_of], smask], dim=1)  # each choice sees its item's prefix, then itself
    pos = torch.tensor([prefixes[i] for i in item_of]).unsqueeze(1) + torch.arange(sids.shape[1])
    hid_s, _ = final_hidden_states(model, sids.to(dev), attention_mask=mask.to(dev), past_key_values=cache,
                                   use_cache=True, position_ids=pos.to(dev))
    rows, targets = [], []
    reqs = [r for rs in reqs_per_item for r in rs]
    for c, ((full, k), i) in enumerate(zip(reqs, item_of)):
        n, p = len(full) - 1, prefixes[i]
        if n - k < p:  # the choice's first scored positions lie in the shared part
            rows.append(hid_p[i, n - k:p])
        rows.append(hid_s[c, max(n - k, p) - p:n - p])
        targets += full[-k:]
    return _sum_logprobs(weight, rows, targets, reqs)


def _sum_logprobs(weight, rows: "list[torch.Tensor]", targets: "list[int]", reqs) -> "list[float]":
    """Per request, the sum of its k target tokens' log-probs, from the hidden states ``rows``
    (concatenated in request order, k per request)."""
    lp = stream_logprobs(torch.cat(rows), weight, top_n=1,
                         targets=torch.tensor(targets, dtype=torch.long, device=rows[0].device)).target_logprobs
    lp = lp.to(torch.float64).cpu()
    return [float(part.sum()) for part in torch.split(lp, [k for _, k in reqs])]


# Shared prefixes shorter than this run in the padded batch (a prefix pass costs a call).
MIN_SHARED_PREFIX = 8

# Architectures (config.model_type) whose shared-prefix scores were checked to equal whole-sequence
# scores (tests/eval/test_tasks.py runs a tiny random model of each): their attention honours the
# position ids and the holes a padded prefix leaves. Others take the padded batch: MPT's ALiBi
# biases by key index, so a shared prefix scored it 1.2 nats off (a tiny random model; the padded
# batch matched the unpadded oracle). Sliding windows and attention chunks also mask by key index:
# see index_window.
SHARED_PREFIX_MODEL_TYPES = frozenset({
    "apertus", "arcee", "bitnet", "bloom", "codegen", "cohere", "cohere2", "deepseek_v2", "deepseek_v3",
    "dots1", "ernie4_5", "exaone4", "falcon", "gemma", "gemma2", "gemma3_text", "glm", "glm4", "glm4_moe",
    "gpt2", "gpt_bigcode", "gpt_neox", "gpt_oss", "gptj", "granite", "granitemoe", "granitemoeshared",
    "helium", "hunyuan_v1_dense", "jetmoe", "llama", "llama4_text", "minicpm3", "ministral", "mistral",
    "mixtral", "nemotron", "olmo", "olmo2", "olmo3", "olmoe", "opt", "persimmon", "phi", "phi3", "phimoe",
    "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "seed_oss", "smollm3", "stablelm", "starcoder2", "vaultgemma",
})


def index_window(model) -> "int | None":
    """The shortest span of keys any of the model's attention layers masks by key index (a sliding
    window, an attention chunk), or None. A shared, padded prefix shifts key indices, so a batch
    whose padded length passes it scored 1.5-6 nats off (Mistral, Qwen2/3, Phi-3, Starcoder2,
    Gemma 2/3 with a window of 16 tokens; tiny random models): the shared path runs only batches
    that fit in it, where every key is in every window."""
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    spans = [getattr(cfg, k, None) for k in ("sliding_window", "attention_chunk_size")]
    spans = [int(v) for v in spans if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    return min(spans) if spans else None


def shares_prefixes(model) -> bool:
    """Whether ``evaluate_tasks(share_prefix=True)`` runs this model's shared prefixes once: a checked
    architecture (SHARED_PREFIX_MODEL_TYPES), not through flash attention (whose unpadding path
    was not checked with the holes a padded prefix leaves)."""
    cfg = getattr(model, "config", None)
    attn = str(getattr(cfg, "_attn_implementation", "") or "")
    return getattr(cfg, "model_type", None) in SHARED_PREFIX_MODEL_TYPES and not attn.startswith("flash")


def _score_items(model, weight, reqs_per_item: "list[list[tuple[list[int], int]]]",
                 share: bool) -> "tuple[list[float], int]":
    """(log-likelihoods of every request of every item, in order; input tokens run). With ``share``,
    the items whose choices share at least MIN_SHARED_PREFIX leading input tokens run them once
    (_score_shared); the other items go through one padded batch (_score_batch)."""
    out: "list[list[float] | None]" = [None] * len(reqs_per_item)
    run = sum(len(full) - 1 for reqs in reqs_per_item for full, _ in reqs)
    if share and shares_prefixes(model):
        prefixes = [_shared_prefix([full[:-1] for full, _ in reqs]) for reqs in reqs_per_item]
        some = [i for i, p in enumerate(prefixes) if p >= MIN_SHARED_PREFIX]
        window = index_window(model)
        if some and window is not None:  # the padded prefix plus the longest rest must fit the window
            rest_len = max(len(full) - 1 - prefixes[i] for i in some for full, _ in reqs_per_item[i])
            if max(prefixes[i] for i in some) + rest_len > window:
                some = []
        lls = _score_shared(model, weight, [reqs_per_item[i] for i in some], [prefixes[i] for i in some]) if some else None
        if lls is not None:
            for i, ll in zip(some, _split(lls, [len(reqs_per_item[i]) for i in some])):
                out[i] = ll
                run -= prefixes[i] * (len(ll) - 1)
    rest = [i for i, o in enumerate(out) if o is None]
    if rest:
        lls = _score_batch(model, weight, [r for i in rest for r in reqs_per_item[i]])
        for i, ll in zip(rest, _split(lls, [len(reqs_per_item[i]) for i in rest])):
            out[i] = ll
    return [ll for o in out for ll in o], run


def _split(flat: list, counts: "list[int]") -> "list[list]":
    """``flat`` cut into consecutive runs of ``counts[j]`` elements."""
    out, at = [], 0
    for n in counts:
        out.append(flat[at:at + n])
        at += n
    return out


def _default_max_length(model) -> int:
    cfg = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return 2048


def _load_checkpoint(path: str, settings: dict) -> "dict[str, dict]":
    """Finished items of an interrupted run with the same settings (``path`` = output + ".partial")."""
    diff = changed_settings(os.path.join(path, "settings.json"), settings)
    if diff is None:
        return {}
    if diff:
        raise ValueError(f"{path} holds a run with different settings ({', '.join(diff)}): "
                         "delete it or rerun with the same model, tasks and options")
    done = {}
    items_file = os.path.join(path, "items.jsonl")
    if os.path.isfile(items_file):
        with open(items_file, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a torn last line from a kill: everything before it is whole
                done[rec["id"]] = rec
    return done


def evaluate_tasks(model, tokenizer, items: "Sequence[dict] | str", *, delimiter: str = " ",
                   batch_size: int = 8, max_length: Optional[int] = None, limit: Optional[int] = None,
                   checkpoint: Optional[str] = None, share_prefix: bool = True,
                   progress: Optional[Callable[[int, int], None]] = None) -> TaskResult:
    """Score multiple-choice ``items`` (dicts as ``read_tasks`` returns, or a path / "demo") with
    ``model``; see the module doc for the method.

    batch_size: items per forward pass (all choices of an item go in the same pass); max_length:
    tokens the model sees per choice (default: the model's context length); limit: the first N
    items only. With ``checkpoint`` (a directory), each finished batch is appended there and a
    rerun with the same settings resumes. share_prefix: the leading tokens an item's choices have
    in common (its context, usually) run once and their KV cache serves every choice (the same
    log-likelihoods to rounding), for the architectures where that was checked (``shares_prefixes``;
    others run whole) and batches that fit in the model's sliding window (``index_window``); False:
    every choice runs whole, in one padded batch.
    progress(items, input tokens run) after each batch.
    Returns a TaskResult (no flips; see ``TaskResult.compare_with``).
    """
    if isinstance(items, str):
        items = read_tasks(items)
    items = [_check_item(it, f"item {i}", f"item-{i}", "tasks") for i, it in enumerate(items)]
    if not items:
        raise ValueError("no task items given")
    for name, v in (("batch_size", batch_size), ("max_length", max_length), ("limit", limit)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if len({it["id"] for it in items}) != len(items):
        raise ValueError("task item ids must be unique")
    items = items[:limit] if limit else items
    max_length = max_length or _default_max_length(model)
    prefix = prefix_token(tokenizer)
    weight = lm_head(model)
    settings = {"model_fingerprint": model_fingerprint(model), "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
                "items_sha256": hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest(),
                "items": len(items), "delimiter": delimiter, "max_length": max_length, "prefix_token": prefix,
                "method": "lm-eval 0.4 multiple_choice (acc, acc_norm)"}
    done = _load_checkpoint(checkpoint, settings) if checkpoint else {}
    log = None
    if checkpoint:
        os.makedirs(checkpoint, exist_ok=True)
        with open(os.path.join(checkpoint, "settings.json"), "w") as f:
            json.dump(settings, f)
        log = open(os.path.join(checkpoint, "items.jsonl"), "a", encoding="utf-8")
    if done and progress:
        progress(len(done), 0)
    model.eval()
    try:
        with torch.inference_mode():
            todo = [it for it in items if it["id"] not in done]
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                reqs = [_item_requests(tokenizer, it, delimiter, prefix, max_length) for it in batch]
                lls, ran = _score_items(model, weight, reqs, share_prefix)
                for it, rs, ll in zip(batch, reqs, _split(lls, [len(rs) for rs in reqs])):
                    pred, pred_norm = _predictions(ll, it["choices"])
                    rec = {"id": it["id"], "task": it["task"], "answer": it["answer"],
                           "loglik": [x if math.isfinite(x) else None for x in ll],
                           "tokens": [k for _, k in rs], "pred": pred, "pred_norm": pred_norm}
                    done[it["id"]] = rec
                    if log:
                        log.write(json.dumps(rec) + "\n")
                if log:
                    log.flush()
                if progress:
                    progress(len(batch), ran)
    finally:
        if log:
            log.close()
    return TaskResult(items=[done[it["id"]] for it in items], settings=settings)
