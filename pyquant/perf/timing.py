"""Clocks that measure what the device did, not what the host queued.

On CUDA, kernels run asynchronously: a host clock read right after a launch measures the launch,
not the work. ``DeviceClock.now()`` therefore synchronizes the device before reading
``time.perf_counter`` (so an interval between two ``now()`` calls covers all work queued in
between); on the CPU it reads ``time.perf_counter`` directly.
"""
from __future__ import annotations

import contextlib
import time

import torch


class DeviceClock:
    """A monotonic clock in seconds for one device ("cpu" or "cuda[:i]").

    ``now()`` returns seconds (float, arbitrary origin); on CUDA it first waits for every
    kernel queued on the device (torch.cuda.synchronize), so differences are device time.
    """

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"DeviceClock: unsupported device {str(device)!r} (use cpu or cuda)")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("DeviceClock: CUDA requested but torch.cuda.is_available() is False")

    def synchronize(self) -> None:
        """Wait until the device has finished all queued work (a no-op on the CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        """Seconds since an arbitrary origin, after the device has finished all queued work."""
        self.synchronize()
        return time.perf_counter()


@contextlib.contextmanager
def cuda_profiler_range(enabled: bool):
    """Wrap a region in cudaProfilerStart/Stop when ``enabled`` (and CUDA is up); else a no-op.

    ``nsys profile --capture-range=cudaProfilerApi`` records exactly what runs inside.
    """
    if enabled and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        try:
            yield
        finally:
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStop()
    else:
        yield
