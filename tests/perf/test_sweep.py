import pytest

from pyquant.perf.sweep import batch_sweep


def _s(b, tps, status="ok"):
    return {"batch": b, "status": status, "decode_tokens_per_s": tps}


def test_gain_per_doubling_and_stop():
    # 1 -> 2: x1.8 (+80 %); 2 -> 8: x1.2321 over two doublings = x1.11 each (+11 %, pays);
    # 8 -> 16: x1.05 (+5 %, stops paying); the failed setting is ignored.
    sw = batch_sweep([_s(16, 100 * 1.8 * 1.2321 * 1.05), _s(1, 100.0), _s(4, None, "error"), _s(2, 180.0),
                      _s(8, 100 * 1.8 * 1.2321)])
    rows = sw["rows"]
    assert [r["batch"] for r in rows] == [1, 2, 8, 16]
    assert rows[0]["gain_per_doubling"] is None and rows[0]["pays"] is None
    assert rows[1]["gain_per_doubling"] == pytest.approx(0.8)
    assert rows[2]["gain_per_doubling"] == pytest.approx(0.11)
    assert rows[3]["gain_per_doubling"] == pytest.approx(0.05)
    assert rows[3]["speedup_vs_first"] == pytest.approx(1.8 * 1.2321 * 1.05)
    assert [r["pays"] for r in rows[1:]] == [True, True, False]
    assert sw["stops_paying_at"] == 16


def test_all_paying_and_threshold():
    sw = batch_sweep([_s(1, 10.0), _s(4, 40.0)])
    assert sw["stops_paying_at"] is None and sw["rows"][1]["gain_per_doubling"] == pytest.approx(1.0)
    assert batch_sweep([_s(1, 10.0), _s(4, 40.0)], threshold=1.5)["stops_paying_at"] == 4
