"""Isolated memory worker: ``python -m pyquant.perf.worker MODEL_FILE IDS_FILE GEN_LEN [THREADS]``.

Loads a ``torch.save``d model and prompt ids, resets the RSS high-water mark, runs one request
(pyquant.perf.latency.run_request) and prints one JSON line of memory figures in bytes (see
pyquant.perf.memory.peak_rss_worker). Runs in its own process so that no other setting's or
the loader's peak hides in the number.
"""
from __future__ import annotations

import gc
import json
import sys

import torch


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    if len(argv) == 4:
        torch.set_num_threads(int(argv[3]))
    from .latency import run_request
    from .memory import max_rss_bytes, peak_rss_bytes, reset_peak_rss, rss_bytes

    model = torch.load(argv[0], weights_only=False)
    ids = torch.load(argv[1])
    model.eval()
    gc.collect()
    after_load = rss_bytes()
    reset = reset_peak_rss()
    run_request(model, ids, int(argv[2]))
    print(json.dumps({"peak_rss_bytes": peak_rss_bytes(), "rss_after_load_bytes": after_load,
                      "max_rss_bytes": max_rss_bytes(), "reset_worked": reset}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
