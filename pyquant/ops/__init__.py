"""Kernel ops behind one dispatcher: qmatmul, stream_logprobs, stream_kl_exact.

Backends register themselves on import (reference everywhere; cpu from pyquant._C; cuda and
triton on GPUs). ``backend_info()`` says which are built/available and which each op would use.
"""
from ._registry import available_backends, backend_info
from .head import LMHead
from .qmatmul import qmatmul

__all__ = ["available_backends", "backend_info", "qmatmul", "stream_logprobs", "stream_kl_exact", "StreamOutput",
           "LMHead"]


def __getattr__(name):  # stream ops live in ops/stream.py
    if name in ("stream_logprobs", "stream_kl_exact", "StreamOutput"):
        from . import stream

        return getattr(stream, name)
    raise AttributeError(f"module 'pyquant.ops' has no attribute {name!r}")


from . import backends  # noqa: E402,F401  (registers the native and Triton backends)
