"""Statistics for per-token quality metrics: percentiles, bootstrap intervals by sequence,
position-bucket curves, and NaN/Inf accounting (non-finite values are counted, never averaged in).

Everything works on float64 numpy arrays. Percentiles use numpy's default linear interpolation.
"""
from __future__ import annotations

import math

import numpy as np
import torch

BOOTSTRAP_SEED = 20240601
BOOTSTRAP_SAMPLES = 1000


def as_f64(x) -> np.ndarray:
    """x (tensor, array or list) as a flat float64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def percentile(x: np.ndarray, q: float) -> float:
    """The q-th percentile (0..100, linear interpolation) of x; NaN if x is empty."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.percentile(x, q)) if x.size else float("nan")


def mean(x: np.ndarray) -> float:
    """Mean of x; NaN if x is empty."""
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()) if x.size else float("nan")


def bootstrap_ratio_ci(num_by_seq: np.ndarray, den_by_seq: np.ndarray, *, samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> "list[float]":
    """95% (``level``) bootstrap interval of sum(num)/sum(den), resampling *sequences* with replacement.

    num_by_seq / den_by_seq: per-sequence sums (e.g. sum of kl and token count). A fixed ``seed``
    makes the interval deterministic. Returns [low, high] (NaN, NaN when there are no tokens).
    """
    num = np.asarray(num_by_seq, dtype=np.float64)
    den = np.asarray(den_by_seq, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError("bootstrap_ratio_ci: num_by_seq and den_by_seq must be 1-D arrays of equal length")
    keep = den > 0
    num, den = num[keep], den[keep]
    if not num.size:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, num.size, size=(samples, num.size))
    ratios = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    alpha = (1.0 - level) / 2.0
    return [float(np.quantile(ratios, alpha)), float(np.quantile(ratios, 1.0 - alpha))]


def position_curve(values: np.ndarray, positions: np.ndarray, *, max_buckets: int = 32) -> dict:
    """Mean of ``values`` by position bucket: equal-width buckets (a power of two wide) so that at
    most ``max_buckets`` cover the largest position. Returns {"bucket_width", "bucket_start" [B],
    "mean" [B], "tokens" [B]} (empty buckets are left out)."""
    values = np.asarray(values, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.int64)
    if values.shape != positions.shape:
        raise ValueError("position_curve: values and positions must have the same shape")
    if not values.size:
        return {"bucket_width": 1, "bucket_start": [], "mean": [], "tokens": []}
    top = int(positions.max()) + 1
    width = 1
    while math.ceil(top / width) > max_buckets:
        width *= 2
    b = positions // width
    counts = np.bincount(b)
    sums = np.bincount(b, weights=values)
    nz = counts > 0
    return {
        "bucket_width": width,
        "bucket_start": (np.nonzero(nz)[0] * width).tolist(),
        "mean": (sums[nz] / counts[nz]).tolist(),
        "tokens": counts[nz].tolist(),
    }


def per_sequence_sums(values: np.ndarray, seq_index: np.ndarray, num_sequences: int) -> np.ndarray:
    """Sum of ``values`` for each sequence (seq_index[i] is the sequence of values[i]); float64 [S]."""
    return np.bincount(np.asarray(seq_index, dtype=np.int64), weights=np.asarray(values, dtype=np.float64),
                       minlength=num_sequences)


def correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of x and y; NaN with fewer than 2 points or zero variance."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])
