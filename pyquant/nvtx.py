"""NVTX ranges for Nsight Systems timelines; a no-op without CUDA. Bottom layer (any module may use it).

    with nvtx.range("pyquant/qmatmul int4-g128 M=1"):
        ...
Names start with "pyquant/" so an nsys timeline reads by itself. Ranges are emitted only when
CUDA is initialised (torch.cuda.is_initialized()), so CPU runs pay one cheap check.
"""
from __future__ import annotations

import contextlib

import torch


def enabled() -> bool:
    # is_initialized() implies a device; is_available() costs ~5 us, too much per decode-size op.
    return torch.cuda.is_initialized()


@contextlib.contextmanager
def range(name: str):  # noqa: A001  (mirrors torch.cuda.nvtx.range)
    if enabled():
        torch.cuda.nvtx.range_push(name)
        try:
            yield
        finally:
            torch.cuda.nvtx.range_pop()
    else:
        yield
