"""``collect_reference``: let the reference model continue a set of prompts, then record, at every
position of prompt and continuation, its top-N ids and log-probs and the log-prob of the actual
next token, through the streaming engine (the [T, V] logits never exist).

Generation is greedy by default (or sampling with a seed), batched with left padding; the record
comes from one forced forward pass per batch (right padding, so every row sees exactly its own
tokens). With ``output`` set, each finished batch is checkpointed in ``output + ".partial/"``:
rerunning the same call resumes and never recomputes finished sequences.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from typing import Callable, Optional, Sequence

import torch

from ..models import final_hidden_states, lm_head, model_fingerprint, tokenizer_fingerprint
from ..ops.stream import stream_logprobs
from ..quant.io import float_dtype
from ..results import changed_settings
from .prompts import Prompt, encode_prompt
from .store import LOGPROB_DTYPES, ReferenceSequence, ReferenceStore

_SETTINGS = "settings.json"


def _eos_ids(model, tokenizer) -> "set[int]":
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return set()
    return {int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])}


def _generate(model, tokenizer, prompts: "list[list[int]]", max_new_tokens: int, sample: bool,
              temperature: float, seed: int) -> "list[list[int]]":
    """Continuations (up to and including the first EOS) of a batch of prompts, left-padded."""
    if max_new_tokens == 0:
        return [[] for _ in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), int(pad), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(p)
        mask[b, width - len(p):] = 1
    kw = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if sample else \
        dict(do_sample=False, temperature=None, top_k=None, top_p=None)
    if sample:
        torch.manual_seed(seed)
    out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                         max_new_tokens=max_new_tokens, min_new_tokens=0, pad_token_id=int(pad), **kw)
    eos = _eos_ids(model, tokenizer)
    conts = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        conts.append(row[:cut])
    return conts


def right_padded(seqs: "list[list[int]] | list[torch.Tensor]") -> "tuple[torch.Tensor, torch.Tensor]":
    """Token sequences of any lengths as (ids [B, W], attention mask [B, W]), zero-padded on the
    right, on the CPU."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[b, :len(s)] = 1
    return ids, mask


def forced_hidden(model, seqs: "list[list[int]] | list[torch.Tensor]") -> "tuple[torch.Tensor, torch.Tensor]":
    """One forward pass over token sequences of any lengths, right-padded (each row sees only its
    own tokens: causal attention never looks right). Returns (final hidden states [B, W, H] on the
    model's device, the padded ids [B, W] on the CPU)."""
    ids, mask = right_padded(seqs)
    hidden, _ = final_hidden_states(model, ids.to(model.device), attention_mask=mask.to(model.device))
    return hidden, ids


def record_sequences(model, seqs: "list[list[int]]", prompt_lens: "list[int]", top_n: int,
                     weight=None) -> "list[ReferenceSequence]":
    """One forced forward pass over ``seqs`` (right-padded) and the streamed top-N record of each.

    Returns one ReferenceSequence per input (top_ids int32, log-probs float32 nats)."""
    weight = lm_head(model) if weight is None else weight
    hidden, ids = forced_hidden(model, seqs)
    out = []
    for b, s in enumerate(seqs):
        toks = ids[b, :len(s)]
        r = stream_logprobs(hidden[b, :len(s) - 1], weight, top_n=top_n, targets=toks[1:].to(hidden.device))
        top_lp, next_lp = r.top_logprobs.float().cpu(), r.target_logprobs.float().cpu()
        if bool(torch.isnan(top_lp).any()) or bool(torch.isnan(next_lp).any()):
            raise ValueError(f"the reference model produced NaN log-probs (sequence of {len(s)} tokens)")
        out.append(ReferenceSequence(tokens=toks.clone(), prompt_len=int(prompt_lens[b]),
                                     top_ids=r.top_ids.to(torch.int32).cpu(), top_logprobs=top_lp,
                                     next_logprobs=next_lp))
    return out


def _load_checkpoint(ckpt: str, settings: dict) -> "dict[int, ReferenceSequence]":
    """Finished sequences from a checkpoint directory made with the same settings."""
    done: dict = {}
    diff = changed_settings(os.path.join(ckpt, _SETTINGS), settings)
    if diff is None:
        return done
    if diff:
        raise ValueError(f"{ckpt} holds a run with different settings ({', '.join(diff)}): "
                         "delete it or rerun with the same model, prompts and options")
    for name in sorted(os.listdir(ckpt)):
        if name.startswith("part-") and name.endswith(".pqref"):
            part = ReferenceStore.load(os.path.join(ckpt, name))
            for j, idx in enumerate(part.meta["indices"]):
                done[int(idx)] = part[j]
    return done


def collect_reference(model, tokenizer, prompts: Sequence[Prompt], max_new_tokens: int = 128, top_n: int = 16, *,
                      sample: bool = False, seed: int = 0, temperature: float = 1.0, batch_size: int = 8,
                      logprob_dtype: str = "float32", output: Optional[str] = None,
                      progress: Optional[Callable[[int, int], None]] = None) -> ReferenceStore:
    """Generate continuations of ``prompts`` with ``model`` and record its top-N distribution at every position.

    prompts: strings and/or chat message lists (see ``prompts.read_prompts``). Greedy unless
    ``sample`` (then multinomial at ``temperature``, seeded per batch from ``seed``). Returns a
    ReferenceStore (log-probs in nats; top_logprobs stored as ``logprob_dtype``). With ``output``,
    finished batches are checkpointed beside it and the store is written there atomically at the
    end (a rerun resumes). ``progress(sequences, tokens)`` is called after each batch.
    """
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("empty prompt set: give at least one prompt")
    for name, v, lo in (("max_new_tokens", max_new_tokens, 0), ("top_n", top_n, 1), ("batch_size", batch_size, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if logprob_dtype not in LOGPROB_DTYPES:
        raise ValueError(f"logprob_dtype must be one of {tuple(LOGPROB_DTYPES)}, got {logprob_dtype!r}")
    if sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    if max_new_tokens == 0 and min(len(e) for e in encoded) < 2:
        raise ValueError("with max_new_tokens=0 every prompt needs at least 2 tokens")
    weight = lm_head(model)
    vocab = weight.shape[0]
    if top_n > vocab:
        raise ValueError(f"top_n={top_n} is larger than the vocabulary ({vocab})")
    generation = {"max_new_tokens": max_new_tokens, "sample": bool(sample), "seed": int(seed),
                  "temperature": float(temperature) if sample else None, "batch_size": batch_size}
    settings = {"model_fingerprint": model_fingerprint(model), "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
                "prompts_sha256": hashlib.sha256(json.dumps(encoded).encode()).hexdigest(), "top_n": top_n,
                "logprob_dtype": logprob_dtype, **generation}
    ckpt = output + ".partial" if output else None
    done = _load_checkpoint(ckpt, settings) if ckpt else {}
    if ckpt:
        os.makedirs(ckpt, exist_ok=True)
        with open(os.path.join(ckpt, _SETTINGS), "w") as f:
            json.dump(settings, f)
    if done and progress:
        progress(len(done), sum(len(s) for s in done.values()))
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            idx = list(range(start, min(start + batch_size, len(encoded))))
            if all(i in done for i in idx):
                continue
            batch = [encoded[i] for i in idx]
            conts = _generate(model, tokenizer, batch, max_new_tokens, sample, temperature, seed * 1_000_003 + start)
            seqs = record_sequences(model, [p + c for p, c in zip(batch, conts)], [len(p) for p in batch], top_n, weight)
            if ckpt:
                part = ReferenceStore.from_sequences(seqs, {"indices": idx, "top_n": top_n}, logprob_dtype)
                part.save(os.path.join(ckpt, f"part-{start:08d}.pqref"))
            done.update(zip(idx, seqs))
            if progress:
                progress(len(seqs), sum(len(s) for s in seqs))
    dtype = float_dtype(model)
    meta = {"model": {"name": str(getattr(model, "pyquant_source", "") or getattr(model.config, "_name_or_path", "")),
                      "fingerprint": settings["model_fingerprint"], "architecture": type(model).__name__,
                      "dtype": str(dtype).replace("torch.", "")},
            "tokenizer_fingerprint": settings["tokenizer_fingerprint"], "top_n": top_n, "generation": generation,
            "prompts_sha256": settings["prompts_sha256"],
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "complete": True}
    store = ReferenceStore.from_sequences([done[i] for i in range(len(encoded))], meta, logprob_dtype)
    if output:
        store.save(output)
        shutil.rmtree(ckpt, ignore_errors=True)
        store = ReferenceStore.load(output)
    return store
