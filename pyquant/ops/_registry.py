"""Backend registry and dispatcher shared by every op.

Each backend module (``pyquant/ops/backends/<op>_<backend>.py``) registers one implementation per op with
``@register(op, backend, devices=..., available=...)``. ``resolve`` picks the first available
backend in PREFERENCE order for the input's device, or the one the caller named (and says why
if that one is unavailable). ``backend_info()`` reports all of it: nothing degrades silently.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

# Fastest first. "reference" is the plain-PyTorch oracle and runs everywhere.
PREFERENCE = {
    "cpu": ("cpu", "reference"),
    "cuda": ("cuda", "triton", "reference"),
}
# Per-op exceptions. stream_logprobs on GPUs: the fused Triton kernel keeps bf16 tensor-core
# GEMMs; the "cuda" backend is a reducer behind a per-tile torch GEMM (fp32 tiles).
OP_PREFERENCE = {
    ("stream_logprobs", "cuda"): ("triton", "cuda", "reference"),
}


def _preference(op: str, dev: str) -> tuple:
    return OP_PREFERENCE.get((op, dev), PREFERENCE.get(dev, ("reference",)))


@dataclasses.dataclass
class Backend:
    op: str
    name: str
    fn: Callable
    devices: tuple
    available: Callable[[], "tuple[bool, str]"]
    # Optional: prepare(weight...) -> run(x, bias) -> y, checking and converting a weight once for
    # repeated calls (see ``register_prepare``). Backends without one are called through ``fn``.
    prepare: "Callable | None" = None
    # Whether prepare's runner takes x[..., K] with any leading dimensions (else x[M, K] only).
    prepare_any_rank: bool = False
    # Whether prepare takes act_bits=8 (the -a8 specs) and quantizes x itself; for other backends
    # the op quantizes x first (reference.with_quantized_activations).
    prepare_act8: bool = False

    @property
    def quantizes_activations(self) -> bool:
        """Whether this backend's prepared runner quantizes x itself for the -a8 specs."""
        return self.prepare is not None and self.prepare_act8

    def status(self) -> "tuple[bool, str]":
        try:
            return self.available()
        except Exception as e:  # an availability probe must never crash dispatch
            return False, f"probe failed: {e}"


_REGISTRY: dict = {}
# (op, device type, backend) -> Backend: resolve()'s answers that found an available backend. The
# probes behind them do not change within a process (extension built, CUDA present, triton
# importable), and this saves ~1.5 us per call; register() clears it.
_RESOLVED: dict = {}


def _always() -> "tuple[bool, str]":
    return True, ""


def register(op: str, name: str, devices=("cpu", "cuda"), available: Callable = _always):
    """Decorator: register ``fn`` as backend ``name`` of ``op`` for the given device types."""

    def deco(fn):
        _REGISTRY.setdefault(op, {})[name] = Backend(op, name, fn, tuple(devices), available)
        _RESOLVED.clear()
        return fn

    return deco


def register_prepare(op: str, name: str, any_rank: bool = False, act8: bool = False):
    """Decorator: ``prepare(*weight_args) -> run(x, bias)`` for backend ``name`` of ``op``, called once
    per weight by the op (which caches the runner) instead of ``fn`` on every call. ``any_rank``:
    the runner takes x[..., K] with any leading dimensions (saves two reshapes per call). ``act8``:
    prepare takes ``act_bits=8`` and its runner quantizes x itself (the -a8 specs)."""

    def deco(prepare):
        b = _REGISTRY[op][name]
        b.prepare, b.prepare_any_rank, b.prepare_act8 = prepare, any_rank, act8
        return prepare

    return deco


def _device_type(device) -> str:
    t = getattr(device, "type", None)  # torch.device; else a string such as "cuda:0"
    return t if t is not None else str(device).split(":")[0]


def resolve(op: str, device, backend: str = "auto") -> Backend:
    """The backend that runs ``op`` on ``device``: the named one, or the first available by preference."""
    dev = _device_type(device)
    hit = _RESOLVED.get((op, dev, backend))
    if hit is not None:
        return hit
    _RESOLVED[(op, dev, backend)] = b = _resolve(op, dev, backend)
    return b


def _resolve(op: str, dev: str, backend: str) -> Backend:
    impls = _REGISTRY.get(op, {})
    if backend != "auto":
        b = impls.get(backend)
        if b is None:
            raise ValueError(f"{op}: unknown backend {backend!r}; registered: {sorted(impls)}")
        if dev not in b.devices:
            raise ValueError(f"{op}: backend {backend!r} does not run on device {dev!r} (runs on {b.devices})")
        ok, why = b.status()
        if not ok:
            raise ValueError(f"{op}: backend {backend!r} is unavailable: {why}")
        return b
    for name in _preference(op, dev):
        b = impls.get(name)
        if b is not None and dev in b.devices and b.status()[0]:
            return b
    raise ValueError(f"{op}: no available backend for device {dev!r}; registered: {sorted(impls)}")


def available_backends(op: str, device="cpu") -> list:
    """Names of the backends of ``op`` that can run on ``device`` here, fastest first."""
    dev = _device_type(device)
    impls = _REGISTRY.get(op, {})
    pref = _preference(op, dev)
    order = list(pref) + sorted(set(impls) - set(pref))
    return [n for n in order if n in impls and dev in impls[n].devices and impls[n].status()[0]]


def backend_info() -> dict:
    """{op: {"backends": {name: {"available", "reason", "devices"}}, "auto": {device: name}}}."""
    out = {}
    for op, impls in sorted(_REGISTRY.items()):
        info = {"backends": {}, "auto": {}}
        for name, b in impls.items():
            ok, why = b.status()
            info["backends"][name] = {"available": ok, "reason": why, "devices": list(b.devices)}
        for dev in PREFERENCE:
            try:
                info["auto"][dev] = resolve(op, dev).name
            except ValueError:
                info["auto"][dev] = None
        out[op] = info
    return out
