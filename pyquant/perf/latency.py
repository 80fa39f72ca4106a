"""One timed generation request: prefill (time to first token), then decode steps with a KV cache.

The loop is written out (not ``generate()``) so each step is timed on its own: the model's own
``forward`` with ``use_cache=True``, greedy next token, no early stop at EOS (every request does
exactly ``gen_len`` output tokens, so variants do the same work). Only the last position's
logits are computed (``logits_to_keep=1``), as a serving engine would.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect

import torch

from .. import nvtx
from ..models import cache_kwarg, output_cache
from .timing import DeviceClock


@dataclasses.dataclass
class RequestTiming:
    """Timings of one request, all in seconds.

    ttft_s: prefill of the whole batch up to the first output token (argmax included).
    decode_step_s: one entry per decode step (``gen_len - 1`` of them): the inter-token latency.
    e2e_s: from the start of prefill to the last output token.
    kv_cache_bytes: bytes of the KV cache at the end of the request (measured on the tensors).
    """

    batch: int
    prompt_len: int
    gen_len: int
    ttft_s: float
    decode_step_s: list
    e2e_s: float
    kv_cache_bytes: int


def allowed_token_ids(model, tokenizer=None) -> torch.Tensor:
    """Token ids to draw random prompts from: the vocabulary minus special tokens (int64 tensor).

    The vocabulary is the smaller of the tokenizer's length and ``config.vocab_size`` (padded
    embedding rows are not tokens). Special ids come from the tokenizer when there is one, else
    from the config's bos/eos/pad ids.
    """
    vocab = int(model.config.vocab_size)
    special = set()
    if tokenizer is not None:
        vocab = min(vocab, len(tokenizer))
        special.update(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = getattr(model.config, name, None)
        for i in (v if isinstance(v, (list, tuple)) else [v]):
            if i is not None:
                special.add(int(i))
    keep = torch.ones(vocab, dtype=torch.bool)
    for i in special:
        if 0 <= i < vocab:
            keep[i] = False
    ids = keep.nonzero().flatten()
    if ids.numel() == 0:
        raise ValueError("no non-special token ids to build prompts from")
    return ids


def prompt_ids(allowed: torch.Tensor, batch: int, prompt_len: int, seed: int, request: int) -> torch.Tensor:
    """Random prompt token ids [batch, prompt_len] (int64, CPU), drawn uniformly from ``allowed``.

    Deterministic in (seed, request, row): row r of request i is the same for every batch size
    and every model variant, so variants are timed on identical inputs.
    """
    if batch < 1 or prompt_len < 1:
        raise ValueError(f"prompt_ids needs batch >= 1 and prompt_len >= 1, got {batch}, {prompt_len}")
    rows = []
    for r in range(batch):
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(request)) * 65_537 + r)
        rows.append(allowed[torch.randint(0, allowed.numel(), (prompt_len,), generator=g)])
    return torch.stack(rows)


def cache_nbytes(cache) -> int:
    """Bytes held by a KV cache (transformers Cache object or legacy tuple of (k, v) tuples)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        ts = [t for layer in layers for t in (getattr(layer, "keys", None), getattr(layer, "values", None))]
    else:
        ts = [t for kv in cache for t in kv]
    return sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor))


def _logits_kwargs(model) -> dict:
    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


@contextlib.contextmanager
def region(name: str, record: bool = False):
    """An NVTX range (no-op without CUDA) and, when ``record``, a torch.profiler label too."""
    with nvtx.range(name):
        if record:
            with torch.profiler.record_function(name):
                yield
        else:
            yield


@torch.inference_mode()
def run_request(model, input_ids: torch.Tensor, gen_len: int, clock: DeviceClock | None = None,
                record: bool = False) -> RequestTiming:
    """Prefill ``input_ids`` [batch, prompt_len] and decode greedily to ``gen_len`` output tokens.

    Returns a RequestTiming (seconds). The first output token comes from prefill; each of the
    ``gen_len - 1`` decode steps feeds the previous token with the KV cache. Ranges are named
    "pyquant/prefill b=B L=L" and "pyquant/decode step=S" (S = 1..gen_len-1).
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must be [batch, prompt_len >= 1], got {list(input_ids.shape)}")
    if gen_len < 1:
        raise ValueError(f"gen_len must be >= 1, got {gen_len}")
    clock = clock or DeviceClock("cpu")
    b, n = input_ids.shape
    kw = _logits_kwargs(model)
    t0 = clock.now()
    with region(f"pyquant/prefill b={b} L={n}", record):
        out = model(input_ids=input_ids, use_cache=True, **kw)
        nxt = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
    t_prev = clock.now()
    ttft = t_prev - t0
    past, cache = output_cache(out), cache_kwarg(model)
    steps = []
    for s in range(1, gen_len):
        with region(f"pyquant/decode step={s}", record):
            out = model(input_ids=nxt, use_cache=True, **{cache: past}, **kw)
            nxt = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
        t = clock.now()
        steps.append(t - t_prev)
        t_prev = t
        past = output_cache(out)
    return RequestTiming(b, n, gen_len, ttft, steps, t_prev - t0, cache_nbytes(past))
