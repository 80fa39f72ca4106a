"""``compare``: force a candidate model through a reference store's tokens and measure, position by
position, how far its distribution is from the reference's (metrics: DESIGN.md).

Per token (flat arrays in store order, sequence by sequence, row by row): ``kl`` (N+1-bucket
top-N KL(ref || cand), nats), ``kl_renorm`` (both renormalized over the reference's N ids, nats),
``reject`` (total variation over the N+1 buckets), ``top1_agree`` (1.0 if the candidate's argmax
is the reference's), ``delta_p`` (p_cand(next) - p_ref(next)), ``nll`` (candidate's -log p(next),
nats); with a live reference model (``exact``), ``kl_exact`` over the full vocabulary.
Tokens where any metric is NaN/Inf are counted in ``nonfinite`` and left out of every statistic.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import numpy as np
import torch

from ..models import lm_head, model_fingerprint, tokenizer_fingerprint
from ..ops.stream import stream_kl_exact, stream_logprobs
from . import stats as st
from .collect import forced_hidden
from .store import ReferenceStore

METRICS = ("kl", "kl_renorm", "reject", "top1_agree", "delta_p", "nll")
SCOPES = ("all", "prefill", "generation")


@dataclasses.dataclass
class CompareResult:
    """Result of ``compare``. per_token: {metric: float64 numpy [rows]} (METRICS, plus "kl_exact"
    with exact, "nll_ref", "seq", "pos", "prefill"); stats: {"all"|"prefill"|"generation": {...}}
    (see ``scope_stats``); curve: KL by position bucket; sequences: per-sequence summaries;
    info: what was compared (store, candidate, backend)."""

    per_token: dict
    stats: dict
    curve: dict
    sequences: list
    info: dict

    def to_dict(self, per_token: bool = False) -> dict:
        """JSON-ready dict: stats, curve, kl_quantiles (0..100%, for a CDF), sequences, info, and
        with ``per_token`` the flat per-token arrays (NaN/Inf become None)."""
        finite = _finite_mask(self.per_token)
        kl = self.per_token["kl"][finite]
        out = {"stats": self.stats, "curve": self.curve,
               "kl_quantiles": {"q": list(range(101)), "kl": np.percentile(kl, range(101)).tolist() if kl.size else []},
               "sequences": self.sequences, "info": self.info}
        if per_token:
            out["per_token"] = {k: [None if not math.isfinite(x) else x for x in v.tolist()]
                                for k, v in self.per_token.items()}
        return out

    def table(self) -> str:
        """A short human-readable table of the main statistics (one column per scope)."""
        rows = [("tokens", "tokens", "{:.0f}"), ("non-finite (excluded)", "nonfinite", "{:.0f}"),
                ("KL mean", "kl_mean", "{:.6f}"), ("KL median", "kl_median", "{:.6f}"), ("KL p99", "kl_p99", "{:.5f}"),
                ("KL max", "kl_max", "{:.4f}"), ("KL renorm mean", "kl_renorm_mean", "{:.6f}"),
                ("reject mean", "reject_mean", "{:.5f}"), ("top-1 agree %", "top1_agree", "{:.2%}"),
                ("delta_p mean", "delta_p_mean", "{:+.5f}"), ("delta_p RMS", "delta_p_rms", "{:.5f}"),
                ("PPL ref", "ppl_ref", "{:.4f}"), ("PPL cand", "ppl_cand", "{:.4f}"), ("PPL ratio", "ppl_ratio", "{:.5f}")]
        if "kl_exact_mean" in self.stats["all"]:
            rows.insert(3, ("KL exact mean", "kl_exact_mean", "{:.6f}"))
        lines = [f"{'':24s}" + "".join(f"{s:>14s}" for s in SCOPES)]
        for label, key, fmt in rows:
            cells = []
            for s in SCOPES:
                v = self.stats[s].get(key)
                cells.append(f"{'-' if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v):>14s}")
            lines.append(f"{label:24s}" + "".join(cells))
        ci = self.stats["all"]["kl_mean_ci95"]
        lines.append(f"KL mean 95% CI (bootstrap by sequence): [{ci[0]:.6f}, {ci[1]:.6f}]")
        return "\n".join(lines)


def _finite_mask(pt: dict) -> np.ndarray:
    keys = [k for k in (*METRICS, "kl_exact") if k in pt]
    m = np.ones_like(pt["kl"], dtype=bool)
    for k in keys:
        m &= np.isfinite(pt[k])
    return m


def scope_stats(pt: dict, scope: np.ndarray, num_sequences: int) -> dict:
    """Statistics over the rows selected by the boolean mask ``scope`` (non-finite rows excluded
    and counted). KL in nats; top1_agree and its interval as fractions (0..1); PPLs from mean NLL."""
    finite = _finite_mask(pt)
    m = scope & finite
    kl, dp = pt["kl"][m], pt["delta_p"][m]
    nll, nll_ref = pt["nll"][m], pt["nll_ref"][m]
    seq = pt["seq"][m].astype(np.int64)
    n_seq = np.bincount(seq, minlength=num_sequences).astype(np.float64)
    out = {
        "tokens": int(m.sum()), "nonfinite": int((scope & ~finite).sum()),
        "kl_mean": st.mean(kl), "kl_median": st.percentile(kl, 50), "kl_p90": st.percentile(kl, 90),
        "kl_p95": st.percentile(kl, 95), "kl_p99": st.percentile(kl, 99), "kl_p999": st.percentile(kl, 99.9),
        "kl_max": float(kl.max()) if kl.size else float("nan"),
        "kl_renorm_mean": st.mean(pt["kl_renorm"][m]),
        "reject_mean": st.mean(pt["reject"][m]), "reject_p99": st.percentile(pt["reject"][m], 99),
        "top1_agree": st.mean(pt["top1_agree"][m]),
        "delta_p_mean": st.mean(dp), "delta_p_rms": math.sqrt(st.mean(dp * dp)) if dp.size else float("nan"),
        "delta_p_p1": st.percentile(dp, 1), "delta_p_p5": st.percentile(dp, 5),
        "delta_p_p95": st.percentile(dp, 95), "delta_p_p99": st.percentile(dp, 99),
        "ppl_ref": math.exp(st.mean(nll_ref)) if nll.size else float("nan"),
        "ppl_cand": math.exp(st.mean(nll)) if nll.size else float("nan"),
        "ln_ppl_ratio_mean": st.mean(nll - nll_ref),
        "kl_mean_ci95": st.bootstrap_ratio_ci(st.per_sequence_sums(kl, seq, num_sequences), n_seq),
        "top1_agree_ci95": st.bootstrap_ratio_ci(st.per_sequence_sums(pt["top1_agree"][m], seq, num_sequences), n_seq),
        "ln_ppl_ratio_ci95": st.bootstrap_ratio_ci(st.per_sequence_sums(nll - nll_ref, seq, num_sequences), n_seq),
    }
    out["ppl_ratio"] = out["ppl_cand"] / out["ppl_ref"] if nll.size else float("nan")
    has = n_seq > 0
    ln_ref = st.per_sequence_sums(nll_ref, seq, num_sequences)[has] / n_seq[has]
    ln_cand = st.per_sequence_sums(nll, seq, num_sequences)[has] / n_seq[has]
    out["ln_ppl_corr"] = st.correlation(ln_ref, ln_cand)
    if "kl_exact" in pt:
        ke = pt["kl_exact"][m]
        out.update(kl_exact_mean=st.mean(ke), kl_exact_p99=st.percentile(ke, 99),
                   kl_exact_max=float(ke.max()) if ke.size else float("nan"))
    return out


def _vocab(weight) -> int:
    return int(weight.out_features if hasattr(weight, "out_features") else weight.shape[0])


def compare(candidate, store, *, tokenizer=None, batch_size: int = 8, reference_model=None, exact: bool = False,
            progress: Optional[Callable[[int, int], None]] = None) -> CompareResult:
    """Force ``candidate`` through every sequence of ``store`` (a ReferenceStore or a .pqref path)
    and compare its distributions with the stored reference's.

    tokenizer: the candidate's tokenizer, checked against the store's fingerprint (ValueError on
    mismatch). exact: also the full-vocabulary ``kl_exact`` against ``reference_model`` (live,
    must be the model the store was made with). progress(sequences, tokens) after each batch.
    Returns a CompareResult (KL in nats, probabilities as fractions).
    """
    if isinstance(store, str):
        store = ReferenceStore.load(store)
    if not isinstance(store, ReferenceStore):
        raise ValueError(f"store must be a ReferenceStore or a .pqref path, got {type(store).__name__}")
    if len(store) == 0:
        raise ValueError("the reference store holds no sequences")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if tokenizer is not None:
        store.check_tokenizer(tokenizer_fingerprint(tokenizer))
    if exact and reference_model is None:
        raise ValueError("exact KL needs the live reference model (reference_model=...)")
    if reference_model is not None and exact:
        want = (store.meta.get("model") or {}).get("fingerprint")
        if want and model_fingerprint(reference_model) != want:
            raise ValueError("the reference model given for exact KL is not the model this store was made with")
    weight = lm_head(candidate)
    v = _vocab(weight)
    top_max = int(store._t["top_ids"].max()) if store.num_rows else 0
    if max(int(store._t["tokens"].max()), top_max) >= v:
        raise ValueError(f"the store holds token ids >= the candidate's vocabulary size {v}: different tokenizer?")
    w_ref = lm_head(reference_model) if exact else None

    cols: dict = {k: [] for k in (*METRICS, "nll_ref", "seq", "pos", "prefill", *(("kl_exact",) if exact else ()))}
    backend = ""
    candidate.eval()
    with torch.inference_mode():
        for start in range(0, len(store), batch_size):
            idx = range(start, min(start + batch_size, len(store)))
            seqs = [store[i] for i in idx]
            hidden, _ = forced_hidden(candidate, [s.tokens for s in seqs])
            h_ref = forced_hidden(reference_model, [s.tokens for s in seqs])[0] if exact else None
            for i, s in zip(idx, seqs):
                rows = len(s) - 1
                dev = hidden.device
                r = stream_logprobs(hidden[i - start, :rows], weight, top_n=1, targets=s.tokens[1:].to(dev),
                                    ref_ids=s.top_ids.to(dev, torch.int64), ref_logprobs=s.top_logprobs.to(dev, torch.float32))
                backend = r.backend
                lq_next = st.as_f64(r.target_logprobs)
                lp_next = st.as_f64(s.next_logprobs)
                cols["kl"].append(st.as_f64(r.kl))
                cols["kl_renorm"].append(st.as_f64(r.kl_renorm))
                cols["reject"].append(st.as_f64(r.reject))
                cols["top1_agree"].append(st.as_f64(r.top1_agree))
                cols["delta_p"].append(np.exp(lq_next) - np.exp(lp_next))
                cols["nll"].append(-lq_next)
                cols["nll_ref"].append(-lp_next)
                cols["seq"].append(np.full(rows, i, dtype=np.float64))
                pos = np.arange(rows, dtype=np.float64)
                cols["pos"].append(pos)
                cols["prefill"].append((pos + 1 < s.prompt_len).astype(np.float64))
                if exact:
                    ke = stream_kl_exact(h_ref[i - start, :rows], w_ref, hidden[i - start, :rows], weight)
                    cols["kl_exact"].append(st.as_f64(ke.kl))
            if progress:
                progress(len(seqs), sum(len(s) for s in seqs))
    pt = {k: np.concatenate(v) for k, v in cols.items()}
    # a non-finite candidate NLL makes delta_p meaningless too: keep them aligned
    pt["delta_p"] = np.where(np.isfinite(pt["nll"]), pt["delta_p"], np.nan)
    return _summarize(pt, store, backend, exact)


def _summarize(pt: dict, store: ReferenceStore, backend: str, exact: bool) -> CompareResult:
    s = len(store)
    prefill = pt["prefill"] > 0
    stats = {"all": scope_stats(pt, np.ones_like(prefill), s), "prefill": scope_stats(pt, prefill, s),
             "generation": scope_stats(pt, ~prefill, s)}
    finite = _finite_mask(pt)
    gen = ~prefill & finite
    prompt_lens = store.prompt_lens[pt["seq"].astype(np.int64)]
    curve = {"position": st.position_curve(pt["kl"][finite], pt["pos"][finite].astype(np.int64)),
             "generation_step": st.position_curve(pt["kl"][gen], (pt["pos"][gen] + 1 - prompt_lens[gen]).astype(np.int64))}
    seqs = []
    for i in range(s):
        m = (pt["seq"] == i) & finite
        seqs.append({"tokens": int(m.sum()), "prompt_len": int(store.prompt_lens[i]),
                     "kl_mean": st.mean(pt["kl"][m]), "top1_agree": st.mean(pt["top1_agree"][m]),
                     "ln_ppl_ref": st.mean(pt["nll_ref"][m]), "ln_ppl_cand": st.mean(pt["nll"][m])})
    info = {"reference": {"path": store.path, "model": store.meta.get("model"), "top_n": store.top_n,
                          "sequences": s, "rows": store.num_rows, "generation": store.meta.get("generation"),
                          "tokenizer_fingerprint": store.tokenizer_fingerprint},
            "backend": backend, "exact": bool(exact)}
    return CompareResult(per_token=pt, stats=stats, curve=curve, sequences=seqs, info=info)
