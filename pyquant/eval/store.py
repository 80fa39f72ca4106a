"""The reference store (``.pqref``): what a reference model predicted at every position of a
set of sequences, compact enough to keep and ship (N ids and log-probs per token).

File layout: a plain safetensors file (readable by any safetensors tool) with tensors
    tokens        int64   [total_tokens]            every sequence's tokens, concatenated
    top_ids       int32   [total_rows, N]           reference's top-N ids (row t predicts tokens[t+1])
    top_logprobs  float32 or float16 [total_rows, N] their full-softmax log-probs (nats)
    next_logprobs float32 [total_rows]              log-prob of the actual next token (nats)
and JSON metadata (``__metadata__["pyquant"]``): format, version, complete, model, tokenizer
fingerprint, N, generation settings, per-sequence ``offsets`` (into tokens, S+1 of them) and
``prompt_lens``, and ``checksum`` = "sha256:" + the hash of the whole data section.
A sequence of L tokens has L-1 rows; row offsets are token offsets minus the sequence index.

Reading memory-maps the file (copy-on-write, nothing is loaded until used) after checking the
header, the sizes (a truncated file is an error) and, by default, the checksum.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import os
import struct
from typing import Iterable, Optional

import numpy as np
import torch

from ..results import atomic_file

FORMAT = "pyquant.reference"
VERSION = 1
_DTYPES = {"I64": torch.int64, "I32": torch.int32, "F32": torch.float32, "F16": torch.float16}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
# tensor name -> allowed dtypes, in file order (widest first so every tensor stays aligned)
_LAYOUT = (("tokens", (torch.int64,)), ("top_ids", (torch.int32,)), ("next_logprobs", (torch.float32,)),
           ("top_logprobs", (torch.float32, torch.float16)))
LOGPROB_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclasses.dataclass
class ReferenceSequence:
    """One stored sequence. tokens int64 [L]; prompt_len (tokens of prompt); top_ids int32 [L-1, N];
    top_logprobs [L-1, N] and next_logprobs [L-1] (nats). Row t is the reference's distribution
    for predicting tokens[t+1]; it is prefill when t + 1 < prompt_len, else generation."""

    tokens: torch.Tensor
    prompt_len: int
    top_ids: torch.Tensor
    top_logprobs: torch.Tensor
    next_logprobs: torch.Tensor

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


class ReferenceStore:
    """A reference store in memory or memory-mapped from a ``.pqref`` file.

    ``len(store)`` sequences; ``store[i]`` a ReferenceSequence; ``store.meta`` the JSON metadata.
    Build one with ``collect_reference`` or ``ReferenceStore.from_sequences``; ``save``/``load``.
    """

    def __init__(self, tensors: dict, meta: dict, path: Optional[str] = None, _mmap=None):
        self._t = tensors
        self.meta = meta
        self.path = path
        self._mmap = _mmap  # keeps the mapping alive as long as the views
        seqs = meta.get("sequences") or {}
        self.offsets = np.asarray(seqs.get("offsets", [0]), dtype=np.int64)
        self.prompt_lens = np.asarray(seqs.get("prompt_lens", []), dtype=np.int64)
        _check_consistent(tensors, self.offsets, self.prompt_lens, meta, path or "<memory>")

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_sequences(cls, sequences: Iterable[ReferenceSequence], meta: dict,
                       logprob_dtype: str = "float32") -> "ReferenceStore":
        """A store holding ``sequences`` (in order) with metadata ``meta`` (format fields are added)."""
        if logprob_dtype not in LOGPROB_DTYPES:
            raise ValueError(f"logprob_dtype must be one of {tuple(LOGPROB_DTYPES)}, got {logprob_dtype!r}")
        seqs = list(sequences)
        n = int(meta.get("top_n") or (seqs[0].top_ids.shape[1] if seqs else 0))
        lengths = [len(s) for s in seqs]
        for i, s in enumerate(seqs):
            if len(s) < 2 or tuple(s.top_ids.shape) != (len(s) - 1, n) or tuple(s.top_logprobs.shape) != (len(s) - 1, n) \
                    or tuple(s.next_logprobs.shape) != (len(s) - 1,) or not 1 <= s.prompt_len <= len(s):
                raise ValueError(f"sequence {i}: inconsistent shapes (L={len(s)}, N={n}, prompt_len={s.prompt_len})")

        def cat(parts, dtype, shape_tail):
            return torch.cat([p.reshape(-1, *shape_tail).to(dtype) for p in parts]) if parts \
                else torch.empty((0, *shape_tail), dtype=dtype)

        tensors = {
            "tokens": cat([s.tokens for s in seqs], torch.int64, ()),
            "top_ids": cat([s.top_ids for s in seqs], torch.int32, (n,)),
            "next_logprobs": cat([s.next_logprobs for s in seqs], torch.float32, ()),
            "top_logprobs": cat([s.top_logprobs for s in seqs], LOGPROB_DTYPES[logprob_dtype], (n,)),
        }
        meta = dict(meta, format=FORMAT, version=VERSION, top_n=n, logprob_dtype=logprob_dtype,
                    num_sequences=len(seqs), num_tokens=int(sum(lengths)),
                    sequences={"offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(int).tolist(),
                               "prompt_lens": [int(s.prompt_len) for s in seqs]})
        meta.setdefault("complete", True)
        return cls(tensors, meta)

    # -- access ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.prompt_lens.shape[0])

    def __getitem__(self, i: int) -> ReferenceSequence:
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"ReferenceStore indices must be integers, got {type(i).__name__}")
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"sequence {i} out of range (store has {len(self)})")
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        ra, rb = a - i, b - i - 1
        return ReferenceSequence(tokens=self._t["tokens"][a:b], prompt_len=int(self.prompt_lens[i]),
                                 top_ids=self._t["top_ids"][ra:rb], top_logprobs=self._t["top_logprobs"][ra:rb],
                                 next_logprobs=self._t["next_logprobs"][ra:rb])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def top_n(self) -> int:
        """N, the number of reference log-probs stored per row."""
        return int(self.meta["top_n"])

    @property
    def tokenizer_fingerprint(self) -> str:
        """Fingerprint of the tokenizer that made the store ('' if unknown)."""
        return str(self.meta.get("tokenizer_fingerprint") or "")

    @property
    def num_rows(self) -> int:
        """Total scored positions (sum over sequences of L-1)."""
        return int(self._t["next_logprobs"].shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data (tokens + per-row arrays)."""
        return int(sum(t.numel() * t.element_size() for t in self._t.values()))

    @property
    def bytes_per_token(self) -> float:
        """Stored bytes per scored position (tensor data / rows)."""
        return self.nbytes / max(1, self.num_rows)

    def check_tokenizer(self, fingerprint: str) -> None:
        """Raise ValueError if ``fingerprint`` is not the tokenizer fingerprint this store was made with."""
        mine = self.tokenizer_fingerprint
        if mine and fingerprint and mine != fingerprint:
            raise ValueError(f"tokenizer mismatch: the reference store {self.path or ''} was made with tokenizer "
                             f"{mine[:16]}..., this model's tokenizer is {fingerprint[:16]}... "
                             "(compare a candidate that shares the reference's tokenizer)")

    # -- files ----------------------------------------------------------------------------------
    def save(self, path: str) -> str:
        """Write the store atomically to ``path`` (temp file + rename) with a checksum; returns path."""
        order = [name for name, _ in _LAYOUT]
        arrays = [self._t[name].contiguous() for name in order]
        h = hashlib.sha256()
        for a in arrays:
            h.update(_bytes_view(a))
        meta = dict(self.meta, checksum="sha256:" + h.hexdigest(), complete=bool(self.meta.get("complete", True)))
        header, off = {"__metadata__": {"pyquant": json.dumps(meta, sort_keys=True)}}, 0
        for name, a in zip(order, arrays):
            n = a.numel() * a.element_size()
            header[name] = {"dtype": _DTYPE_NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + n]}
            off += n
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * (-len(hb) % 8)
        with atomic_file(path, "wb", suffix=".pqref") as f:
            f.write(struct.pack("<Q", len(hb)))
            f.write(hb)
            for a in arrays:
                f.write(_bytes_view(a))
        self.meta = meta
        return path

    @classmethod
    def load(cls, path: str, verify: bool = True) -> "ReferenceStore":
        """Memory-map a ``.pqref`` file. ValueError if it is not a store, is truncated, incomplete,
        of a newer version or (with ``verify``) fails its checksum."""
        size = os.path.getsize(path)
        if size < 8:
            raise ValueError(f"{path}: truncated reference store ({size} bytes)")
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        (hlen,) = struct.unpack("<Q", mm[:8])
        if hlen > size - 8:
            raise ValueError(f"{path}: truncated or not a reference store (header of {hlen} bytes, file {size})")
        try:
            header = json.loads(bytes(mm[8:8 + hlen]))
            meta = json.loads(header.pop("__metadata__")["pyquant"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a pyquant reference store (bad header: {e})") from e
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a pyquant reference store (format {meta.get('format')!r})")
        if int(meta.get("version", 0)) > VERSION:
            raise ValueError(f"{path}: reference store version {meta.get('version')} is newer than this pyquant reads ({VERSION})")
        if not meta.get("complete"):
            raise ValueError(f"{path}: the reference store is marked incomplete (its collection did not finish)")
        start = 8 + hlen
        data_len = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
        if size - start < data_len:
            raise ValueError(f"{path}: truncated reference store (data has {size - start} of {data_len} bytes)")
        if verify:
            digest = "sha256:" + hashlib.sha256(memoryview(mm)[start:start + data_len]).hexdigest()
            if digest != meta.get("checksum"):
                raise ValueError(f"{path}: corrupted reference store (checksum mismatch)")
        tensors = {}
        for name, allowed in _LAYOUT:
            spec = header.get(name)
            if spec is None:
                raise ValueError(f"{path}: reference store has no tensor {name!r}")
            dtype = _DTYPES.get(spec.get("dtype"))
            if dtype not in allowed:
                raise ValueError(f"{path}: tensor {name!r} has dtype {spec.get('dtype')!r}, expected one of {allowed}")
            a, b = (int(x) for x in spec["data_offsets"])
            shape = [int(x) for x in spec["shape"]]
            count = int(np.prod(shape)) if shape else 1
            if b - a != count * torch.empty((), dtype=dtype).element_size():
                raise ValueError(f"{path}: tensor {name!r} has inconsistent size")
            flat = torch.frombuffer(mm, dtype=dtype, count=count, offset=start + a) if count \
                else torch.empty(0, dtype=dtype)
            tensors[name] = flat.reshape(shape)
        return cls(tensors, meta, path=path, _mmap=mm)


def _bytes_view(t: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, without a copy."""
    t = t.detach().cpu().contiguous()
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def _check_consistent(t: dict, offsets: np.ndarray, prompt_lens: np.ndarray, meta: dict, where: str) -> None:
    missing = [name for name, _ in _LAYOUT if name not in t]
    if missing:
        raise ValueError(f"{where}: reference store lacks {missing}")
    s = prompt_lens.shape[0]
    n = int(meta.get("top_n", 0))
    ntok = t["tokens"].shape[0]
    rows = ntok - s
    if offsets.shape != (s + 1,) or offsets[0] != 0 or offsets[-1] != ntok or (np.diff(offsets) < 2).any():
        raise ValueError(f"{where}: reference store has inconsistent sequence offsets")
    if ((prompt_lens < 1) | (prompt_lens > np.diff(offsets))).any():
        raise ValueError(f"{where}: reference store has prompt lengths outside their sequences")
    if tuple(t["top_ids"].shape) != (rows, n) or tuple(t["top_logprobs"].shape) != (rows, n) \
            or tuple(t["next_logprobs"].shape) != (rows,):
        raise ValueError(f"{where}: reference store tensors do not match {s} sequences of {ntok} tokens with N={n}")
