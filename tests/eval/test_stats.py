"""Statistics helpers: percentiles, bootstrap by sequence, position curves, correlation."""
import numpy as np
import pytest

from pyquant.eval import stats as st


def test_bootstrap_is_deterministic_and_brackets_the_mean():
    rng = np.random.default_rng()
    num = rng.exponential(size=40)
    den = rng.integers(1, 30, size=40).astype(float)
    a = st.bootstrap_ratio_ci(num, den)
    b = st.bootstrap_ratio_ci(num, den)
    assert a == b  # fixed seed
    assert a != st.bootstrap_ratio_ci(num, den, seed=st.BOOTSTRAP_SEED + 1)
    ratio = num.sum() / den.sum()
    assert a[0] < ratio < a[1]


def test_bootstrap_matches_a_plain_loop():
    rng = np.random.default_rng()
    num, den = rng.random(7), rng.integers(1, 5, size=7).astype(float)
    lo, hi = st.bootstrap_ratio_ci(num, den, samples=200, seed=3)
    g = np.random.default_rng(3)
    idx = g.integers(0, 7, size=(200, 7))
    r = [num[i].sum() / den[i].sum() for i in idx]
    assert lo == pytest.approx(np.quantile(r, 0.025)) and hi == pytest.approx(np.quantile(r, 0.975))


def test_bootstrap_edge_cases():
    assert all(np.isnan(st.bootstrap_ratio_ci(np.zeros(3), np.zeros(3))))
    with pytest.raises(ValueError):
        st.bootstrap_ratio_ci(np.zeros(3), np.zeros(4))


def test_position_curve_hand_case():
    vals = np.array([1.0, 3.0, 5.0, 7.0, 10.0])
    pos = np.array([0, 1, 2, 3, 9])
    c = st.position_curve(vals, pos, max_buckets=4)  # width 4: buckets [0,4) and [8,12)
    assert c["bucket_width"] == 4
    assert c["bucket_start"] == [0, 8] and c["tokens"] == [4, 1]
    assert c["mean"] == pytest.approx([4.0, 10.0])
    c1 = st.position_curve(vals, pos, max_buckets=32)
    assert c1["bucket_width"] == 1 and c1["mean"] == pytest.approx(list(vals))


def test_percentile_mean_and_correlation():
    x = np.random.default_rng().normal(size=101)
    assert st.percentile(x, 99.9) == pytest.approx(np.sort(x)[100 - 1] + 0.9 * (np.sort(x)[100] - np.sort(x)[99]))
    assert np.isnan(st.percentile(np.array([]), 50)) and np.isnan(st.mean(np.array([])))
    assert st.correlation(x, 2 * x + 1) == pytest.approx(1.0)
    assert np.isnan(st.correlation(x[:1], x[:1]))
