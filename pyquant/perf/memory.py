"""Memory figures: weight bytes in memory, bytes on disk, KV-cache bytes, peak runtime memory.

Peak runtime memory on the CPU is the peak RSS of an *isolated worker process* per setting
(pyquant/perf/worker.py): the worker loads the model, resets the kernel's high-water mark
(``/proc/self/clear_refs`` <- 5, Linux >= 4.0) and runs one request, so loading transients and
other settings do not hide in the number. On CUDA it is ``torch.cuda.max_memory_allocated``
after a reset, plus the device's own view from NVML when ``pynvml`` is installed.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile

import torch

from ..formats import QuantizedWeight


def _tensor_key(t: torch.Tensor):
    return (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, tuple(t.shape))


def weight_bytes(model: torch.nn.Module) -> dict:
    """Bytes of the model's weights in memory, each tensor counted once (tied weights once).

    Returns {"total": bytes, "quantized": bytes of quantized weights (QuantizedWeight.nbytes:
    packed codes + scales + zero-points, found as module attributes or a QuantLinear's ``qw``),
    "dense": bytes of all other parameters and buffers, "quantized_layers": how many}.
    """
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"weight_bytes needs a torch.nn.Module, got {type(model).__name__}")
    seen = set()
    quant = dense = nq = 0
    for mod in model.modules():
        qws = [v for v in vars(mod).values() if isinstance(v, QuantizedWeight)]
        if isinstance(getattr(type(mod), "qw", None), property):  # QuantLinear: buffers viewed as a QuantizedWeight
            qws.append(mod.qw)
        for qw in qws:
            keys = {_tensor_key(t) for t in qw.tensors().values()}
            if keys <= seen:
                continue
            seen |= keys
            nq += 1
            quant += qw.nbytes
    for t in list(model.parameters()) + list(model.buffers()):
        k = _tensor_key(t)
        if k not in seen:
            seen.add(k)
            dense += t.numel() * t.element_size()
    return {"total": quant + dense, "quantized": quant, "dense": dense, "quantized_layers": nq}


def disk_bytes(path: str) -> int:
    """Bytes on disk of a file, or of every file under a directory (recursively). ValueError if missing."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    if not os.path.isdir(path):
        raise ValueError(f"disk_bytes: no such file or directory: {path!r}")
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def kv_cache_bytes(config, batch: int, seq_len: int, dtype=torch.float32) -> int:
    """Bytes of a full-attention KV cache for ``batch`` sequences of ``seq_len`` positions.

    2 (K and V) * layers * batch * kv_heads * head_dim * seq_len * bytes per element of ``dtype``.
    """
    if batch < 0 or seq_len < 0:
        raise ValueError(f"kv_cache_bytes: batch and seq_len must be >= 0, got {batch}, {seq_len}")
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * int(config.num_hidden_layers) * batch * kv_heads * int(head_dim) * seq_len * elem


def saved_bytes(model: torch.nn.Module) -> dict:
    """Bytes on disk of the model saved to a temporary directory (deleted afterwards).

    Quantized models (any QuantizedWeight found) are written with ``pyquant.save_quantized``,
    others with ``save_pretrained`` (safetensors). Returns {"bytes": int, "format": str}.
    """
    with tempfile.TemporaryDirectory(prefix="pyquant-disk-") as d:
        if weight_bytes(model)["quantized_layers"]:
            from ..quant.io import save_quantized

            save_quantized(model, d)
            fmt = "pyquant-quantized"
        else:
            model.save_pretrained(d, safe_serialization=True)
            fmt = "safetensors"
        return {"bytes": disk_bytes(d), "format": fmt}


# -- process memory (Linux /proc) ----------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int | None:
    """Current resident set size of this process in bytes (None where /proc is unavailable)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int | None:
    """High-water mark of this process's RSS in bytes since start or the last reset_peak_rss()."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux clear_refs 5); True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def max_rss_bytes() -> int:
    """Peak RSS of this process over its whole life (getrusage ru_maxrss, KiB on Linux) in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_worker(model_file: str, ids_file: str, gen_len: int, threads: int | None = None,
                    timeout: float | None = None) -> dict:
    """Run one request in a fresh worker process and return its memory figures (bytes).

    ``model_file``: a ``torch.save``d model object; ``ids_file``: a ``torch.save``d prompt
    tensor [batch, prompt_len]. Returns {"peak_rss_bytes" (during the request, after the reset),
    "rss_after_load_bytes", "max_rss_bytes" (whole life, loading included), "reset_worked"} or
    {"error": message} if the worker failed (e.g. killed by the out-of-memory killer).
    """
    cmd = [sys.executable, "-m", "pyquant.perf.worker", model_file, ids_file, str(int(gen_len))]
    if threads:
        cmd.append(str(int(threads)))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"memory worker timed out after {timeout} s"}
    if p.returncode != 0:
        why = "killed (out of memory?)" if p.returncode in (-9, 137) else f"exit code {p.returncode}"
        tail = (p.stderr or "").strip().splitlines()[-1:] or [""]
        return {"error": f"memory worker {why}: {tail[0]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def cuda_memory(device) -> dict:
    """CUDA memory after a setting: {"max_allocated_bytes", "max_reserved_bytes"} from torch's
    allocator since the last reset, plus {"nvml_used_bytes", "nvml_total_bytes"} (the whole
    device, all processes) when pynvml is installed."""
    out = {"max_allocated_bytes": torch.cuda.max_memory_allocated(device),
           "max_reserved_bytes": torch.cuda.max_memory_reserved(device)}
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            idx = torch.device(device).index
            h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device() if idx is None else idx)
            info = pynvml.nvmlDeviceGetMemoryInfo(h)
            out["nvml_used_bytes"], out["nvml_total_bytes"] = int(info.used), int(info.total)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # pynvml absent or no NVML: the allocator's figures stand alone
        pass
    return out
