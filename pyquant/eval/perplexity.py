"""Perplexity of text documents, token- word- and byte-level, scored through the streaming engine.

``mode="rolling"`` reproduces lm-evaluation-harness 0.4.x ``loglikelihood_rolling``: the
document's tokens (no special tokens added) are cut by ``get_rolling_token_windows(context_len=1)``
+ ``make_disjoint_window``; the first window is the prefix token (BOS, else EOS) and the first
``context - 1`` tokens and predicts ``context`` tokens; each later window predicts the next up to
``context`` tokens from the ``context`` tokens that end just before its last prediction.
``mode="strided"``: windows of ``context`` tokens moved by ``stride``; each window scores only the
tokens not scored before, so every token after the first window sees >= ``context - stride`` tokens.

Word and byte counts, word/byte perplexity and bits per byte follow lm-eval's definitions:
words = len(re.split(r"\\s+", doc)), bytes = len(doc.encode("utf-8")),
word_perplexity = exp(-LL / words), byte_perplexity = exp(-LL / bytes), bits_per_byte = -LL / bytes / ln 2.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Optional, Sequence

import torch

from ..models import lm_head
from ..ops.stream import stream_logprobs
from .collect import forced_hidden

MODES = ("rolling", "strided")


def rolling_windows(tokens: Sequence[int], prefix: int, context: int) -> "list[tuple[list[int], int]]":
    """lm-eval's disjoint rolling windows as (window, k): the model reads window[:-1] and the last
    k tokens of the window are the predicted (scored) tokens. Every token is scored exactly once."""
    toks = list(tokens)
    if not toks:
        return []
    first = min(context, len(toks))
    out = [([prefix] + toks[:first], first)]
    done = first
    while done < len(toks):
        k = min(len(toks) - done, context)
        end = done + k
        out.append((toks[end - context - 1:end], k))
        done = end
    return out


def strided_windows(tokens: Sequence[int], prefix: int, context: int, stride: int) -> "list[tuple[list[int], int]]":
    """Sliding windows over [prefix] + tokens, as (window, k) like ``rolling_windows``: inputs of at
    most ``context`` tokens starting every ``stride``; each scores the tokens no earlier window scored."""
    seq = [prefix] + list(tokens)
    n = len(seq) - 1
    out, start, scored = [], 0, 0
    while scored < n:
        end = min(start + context, n)
        out.append((seq[start:end + 1], end - scored))
        scored = end
        start += stride
    return out


def count_words(doc: str) -> int:
    """Words as lm-eval counts them: len(re.split(r"\\s+", doc))."""
    return len(re.split(r"\s+", doc))


def count_bytes(doc: str) -> int:
    """UTF-8 bytes of doc."""
    return len(doc.encode("utf-8"))


@dataclasses.dataclass
class PerplexityResult:
    """Perplexity of a document or of all of them. loglikelihood: total log-prob (nats) of the
    tokens; tokens/words/bytes: counts; token/word/byte perplexity = exp(-LL / count);
    bits_per_byte = -LL / bytes / ln 2. Total results also carry ``documents`` and ``settings``.
    Fields are also readable as dict keys (``result["bits_per_byte"]``)."""

    loglikelihood: float
    tokens: int
    words: int
    bytes: int
    documents: list = dataclasses.field(default_factory=list)
    settings: dict = dataclasses.field(default_factory=dict)

    @property
    def token_perplexity(self) -> float:
        return math.exp(-self.loglikelihood / self.tokens) if self.tokens else float("nan")

    @property
    def word_perplexity(self) -> float:
        return math.exp(-self.loglikelihood / self.words) if self.words else float("nan")

    @property
    def byte_perplexity(self) -> float:
        return math.exp(-self.loglikelihood / self.bytes) if self.bytes else float("nan")

    @property
    def bits_per_byte(self) -> float:
        return -self.loglikelihood / self.bytes / math.log(2) if self.bytes else float("nan")

    def __getitem__(self, key: str):
        return self.summary()[key]

    def summary(self) -> dict:
        """The figures of this result as a dict (no documents)."""
        return {k: getattr(self, k) for k in ("loglikelihood", "tokens", "words", "bytes", "token_perplexity",
                                              "word_perplexity", "byte_perplexity", "bits_per_byte")}

    def to_dict(self) -> dict:
        """JSON-ready: {"total": summary, "documents": [summary, ...], "settings": {...}}."""
        return {"total": self.summary(), "documents": [d.summary() for d in self.documents], "settings": self.settings}

    def table(self) -> str:
        """A short human-readable summary."""
        return (f"documents {len(self.documents)}  tokens {self.tokens}  words {self.words}  bytes {self.bytes}\n"
                f"loglikelihood {self.loglikelihood:.4f} nats\n"
                f"token perplexity {self.token_perplexity:.4f}   word perplexity {self.word_perplexity:.4f}\n"
                f"byte perplexity {self.byte_perplexity:.5f}   bits per byte {self.bits_per_byte:.5f}")


def prefix_token(tokenizer) -> int:
    """lm-eval's prefix token: BOS if the tokenizer has one, else EOS."""
    tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start the first window with")
    return int(tid)


def perplexity(model, tokenizer, texts: Sequence[str], context: int = 2048, mode: str = "rolling",
               stride: Optional[int] = None, batch_size: int = 1,
               progress: Optional[Callable[[int, int], None]] = None) -> PerplexityResult:
    """Log-likelihood and perplexities of ``texts`` (each a document) under ``model``.

    context: tokens per window (lm-eval's max_length); mode: "rolling" (lm-eval's
    loglikelihood_rolling) or "strided" (with ``stride``, default context // 2). Windows are run
    ``batch_size`` at a time. Returns a PerplexityResult (totals, with per-document results in
    ``documents``). progress(windows, tokens scored) after each batch.
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("no texts: give at least one document")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for name, v in (("context", context), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if mode == "strided":
        stride = context // 2 if stride is None else stride
        if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= context:
            raise ValueError(f"stride must be an integer in [1, context={context}], got {stride!r}")
    elif stride is not None:
        raise ValueError("stride applies to mode='strided' only")
    max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_pos and context > max_pos:
        raise ValueError(f"context={context} is longer than the model's max_position_embeddings={max_pos}")
    prefix = prefix_token(tokenizer)
    windows = []  # (doc index, window, k)
    docs = []
    for d, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"text {d} is a {type(text).__name__}, not a string")
        toks = tokenizer(text, add_special_tokens=False)["input_ids"]
        w = rolling_windows(toks, prefix, context) if mode == "rolling" else strided_windows(toks, prefix, context, stride)
        windows += [(d, win, k) for win, k in w]
        docs.append(PerplexityResult(0.0, len(toks), count_words(text), count_bytes(text)))
    weight = lm_head(model)
    ll = [0.0] * len(texts)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            batch = windows[start:start + batch_size]
            hidden, ids = forced_hidden(model, [win[:-1] for _, win, _ in batch])
            for b, (d, win, k) in enumerate(batch):
                n = len(win) - 1
                targets = torch.as_tensor(win[-k:], dtype=torch.long, device=hidden.device)
                r = stream_logprobs(hidden[b, n - k:n], weight, top_n=1, targets=targets)
                ll[d] += float(r.target_logprobs.to(torch.float64).sum())
            if progress:
                progress(len(batch), sum(k for _, _, k in batch))
    for d, doc in enumerate(docs):
        doc.loglikelihood = ll[d]
    settings = {"context": context, "mode": mode, "stride": stride, "prefix_token": prefix,
                "windows": len(windows), "add_special_tokens": False}
    return PerplexityResult(sum(ll), sum(d.tokens for d in docs), sum(d.words for d in docs),
                            sum(d.bytes for d in docs), documents=docs, settings=settings)
