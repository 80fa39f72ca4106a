"""Synthetic results files for the report tests (shapes of pyquant/results.py kinds)."""
import random

import pytest

from pyquant.results import make_results, write_results


def synthetic_compare(kl_mean, seed, n_seq=4, prompt_len=6, gen=10, per_token=True):
    """A compare results data dict in pq.compare's to_dict layout whose per-token KL has about the given mean."""
    rng = random.Random(seed)
    rows = prompt_len - 1 + gen
    kl = [rng.expovariate(1.0 / kl_mean) if kl_mean > 0 else 0.0 for _ in range(n_seq * rows)]
    mean = sum(kl) / len(kl)
    stats = {"kl_mean": mean, "kl_mean_ci95": [mean * 0.8, mean * 1.2], "kl_p99": max(kl), "kl_max": max(kl),
             "top1_agree": 1.0 - 5 * mean, "top1_agree_ci95": [0.9 - 5 * mean, 1.0], "reject_mean": mean / 2,
             "ppl_ratio": 1.0 + mean, "ppl_ref": 3.0, "ppl_cand": 3.0 * (1 + mean), "tokens": len(kl), "nonfinite": 0}
    srt = sorted(kl)
    data = {"stats": {"all": stats, "prefill": stats, "generation": stats},
            "curve": {"position": {"bucket_width": 1, "bucket_start": list(range(rows)),
                                   "mean": [sum(kl[s * rows + t] for s in range(n_seq)) / n_seq for t in range(rows)],
                                   "tokens": [n_seq] * rows}},
            "kl_quantiles": {"q": list(range(101)), "kl": [srt[min(len(srt) - 1, q * len(srt) // 100)] for q in range(101)]},
            "sequences": [{"tokens": rows, "prompt_len": prompt_len} for _ in range(n_seq)]}
    if per_token:
        data["per_token"] = {"kl": kl, "seq": [s for s in range(n_seq) for _ in range(rows)],
                             "pos": [t for _ in range(n_seq) for t in range(rows)],
                             "prefill": [float(t + 1 < prompt_len) for _ in range(n_seq) for t in range(rows)]}
    return data


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


@pytest.fixture
def write_result(tmp_path):
    """write_result(file name, kind, data, variant, model=None, complete=True): write one results
    file under tmp_path and return its path."""
    def write(fname, kind, data, variant, model=None, complete=True):
        p = tmp_path / fname
        write_results(str(p), make_results(kind, data, variant=variant, model=model, complete=complete, machine={}))
        return str(p)
    return write
