"""Synthetic results files for the report tests (shapes of pyquant/results.py kinds)."""
import random

import pytest

from pyquant.results import make_results, write_results


def synthetic_compare(kl_mean, seed, n_seq=4, prompt_len=6, gen=10):
    """A compare results data dict whose per-token KL has the given mean."""
    rng = random.Random(seed)
    rows = prompt_len - 1 + gen
    kl = [rng.expovariate(1.0 / kl_mean) if kl_mean > 0 else 0.0 for _ in range(n_seq * rows)]
    mean = sum(kl) / len(kl)
    stats = {"kl_mean": mean, "kl_mean_ci95": [mean * 0.8, mean * 1.2], "kl_p99": max(kl), "kl_max": max(kl),
             "top1_agree": 1.0 - 5 * mean, "top1_agree_ci95": [0.9 - 5 * mean, 1.0], "reject_mean": mean / 2,
             "ppl_ratio": 1.0 + mean, "ppl_ref": 3.0, "ppl_cand": 3.0 * (1 + mean), "tokens": len(kl), "nonfinite": 0}
    return {"stats": {"all": stats, "prefill": stats, "generation": stats},
            "per_token": {"kl": kl}, "prompt_lens": [prompt_len] * n_seq, "rows": [rows] * n_seq}


def synthetic_bench(weight_mib, tpot_ms):
    """A bench results data dict in pq.benchmark's layout (times in seconds, memory in bytes)."""
    def setting(b, ttft, tpot, peak_mib):
        return {"batch": b, "status": "ok", "ttft_s": {"p50": ttft, "p99": ttft * 1.4},
                "tpot_s": {"p50": tpot, "p99": tpot * 1.5}, "decode_tokens_per_s": b / tpot,
                "peak_memory": {"peak_rss_bytes": peak_mib * 2**20}}
    return {"memory": {"weights": {"total": weight_mib * 2**20}, "disk": {"bytes": weight_mib * 2**20 * 1.01}},
            "settings": [setting(8, 0.2, 2 * tpot_ms / 1e3, 400 + weight_mib),
                         setting(1, 0.05, tpot_ms / 1e3, 300 + weight_mib),
                         {"batch": 16, "status": "error", "error": "out of memory"}]}


# variant: (mean KL, weight MiB, TPOT ms). fp32 -> int8 -> int4-g32 is the knee's shape.
VARIANTS = {"fp32": (0.0, 520, 40.0), "int8": (0.002, 135, 22.0), "int4-g32": (0.012, 80, 18.0),
            "int4-g128": (0.04, 72, 17.0)}


@pytest.fixture(name="VARIANTS")
def variants_fixture():
    return VARIANTS


@pytest.fixture
def results_files(tmp_path):
    paths = []
    for i, (name, (kl, mib, tpot)) in enumerate(VARIANTS.items()):
        for kind, data in (("compare", synthetic_compare(kl, seed=i)), ("bench", synthetic_bench(mib, tpot)),
                           ("perplexity", {"total": {"token_perplexity": 10 + kl * 100, "bits_per_byte": 1.0 + kl}})):
            p = tmp_path / f"{name}.{kind}.json"
            write_results(str(p), make_results(kind, data, variant=name, machine={}))
            paths.append(str(p))
    return paths
